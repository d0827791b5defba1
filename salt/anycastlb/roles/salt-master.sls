{#- role salt-master: the salt-master itself (its firewall lets the minions in). #}
{%- from "anycastlb/packages.jinja" import packages with context %}
{{ packages('salt-master', []) }}
