{#- role anycast: a backend of an anycast service: it announces the VIP itself, while its check passes. #}
{%- from "anycastlb/packages.jinja" import packages with context %}
{{ packages('anycast', []) }}
