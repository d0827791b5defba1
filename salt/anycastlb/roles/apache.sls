{#- role apache: a backend with an apache2 vhost for at least one service. #}
{%- from "anycastlb/packages.jinja" import packages with context %}
{{ packages('apache', ['apache2']) }}
