{#- role bird: the node speaks BGP (speaker, route reflector or listener). #}
{%- from "anycastlb/packages.jinja" import packages with context %}
{{ packages('bird', ['bird2']) }}
