{#- anycastlb highstate. A minion the catalog names (its pillar slice comes from the
    anycastlb ext_pillar) gets: packages every node needs, one sls per role it has,
    then its daemons' configs. A minion the catalog does not name gets nothing. #}
base:
  '{{ grains["id"] }}':
{%- if salt['pillar.get']('anycastlb:node') %}
    - anycastlb.common
  {%- for role in salt['pillar.get']('anycastlb:roles', []) %}
    - anycastlb.roles.{{ role }}
  {%- endfor %}
    - anycastlb.daemons
{%- else %}
    []
{%- endif %}
