{#- `state.apply anycastlb`: everything anycastlb manages on this node. A minion the catalog
    names (its `anycastlb` pillar comes from the ext_pillar) gets: packages every node
    needs, one sls per role it has, then its daemons' configs. A minion the catalog does
    not name gets nothing, so a site's top file may give `anycastlb` to '*'
    (docs/examples/salt/top.sls). The rolling deploy applies exactly this sls. #}
{%- if salt['pillar.get']('anycastlb:node') %}
include:
  - anycastlb.common
{%- for role in salt['pillar.get']('anycastlb:roles', []) %}
  - anycastlb.roles.{{ role }}
{%- endfor %}
  - anycastlb.daemons
{%- endif %}
