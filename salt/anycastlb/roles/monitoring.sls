{#- role monitoring: Icinga2 with the monitoring plugins watches every VIP, frontend, backend and announcer. #}
{%- from "anycastlb/packages.jinja" import packages with context %}
{{ packages('monitoring', ['icinga2', 'monitoring-plugins']) }}
