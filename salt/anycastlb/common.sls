{#- Every node: the nftables firewall (default deny, one rule per reason). #}
{%- from "anycastlb/packages.jinja" import packages with context %}
{{ packages('common', ['nftables']) }}
