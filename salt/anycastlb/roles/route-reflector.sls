{#- role route-reflector: reflects every path of every VIP to the peers and listeners (BIRD). #}
{%- from "anycastlb/packages.jinja" import packages with context %}
{{ packages('route-reflector', []) }}
