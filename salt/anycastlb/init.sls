{#- `state.apply anycastlb`: the same as the highstate of a node (see top.sls). #}
include:
  - anycastlb.common
{%- for role in salt['pillar.get']('anycastlb:roles', []) %}
  - anycastlb.roles.{{ role }}
{%- endfor %}
  - anycastlb.daemons
