{#- role backend: a backend of an HAProxy service (its firewall lets the LB nodes in). #}
{%- from "anycastlb/packages.jinja" import packages with context %}
{{ packages('backend', []) }}
