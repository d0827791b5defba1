{#- role monitoring: Icinga2 with the monitoring plugins watches every VIP, frontend, backend and announcer. #}
{%- from "anycastlb/packages.jinja" import packages with context %}
{{ packages('monitoring', ['icinga2', 'monitoring-plugins']) }}

{#- The announcer and route-reflector checks read BIRD's control socket (root:bird, 0660)
    as the plugin user: nagios joins group bird before Icinga2 starts. #}
anycastlb-nagios-reads-bird:
  group.present:
    - name: bird
    - addusers: [nagios]
