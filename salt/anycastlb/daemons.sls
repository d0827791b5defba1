{#- The daemons this node runs, in the registry's order (nftables, apache2, haproxy,
    healthd, bird, icinga2): which ones is decided by the anycastlb package
    (`salt-call anycastlb.daemons`), not here. The healthd step also puts the
    node's VIPs on lo. #}
{%- for daemon in salt['anycastlb.daemons']() %}

anycastlb-{{ daemon }}:
  anycastlb.configured:
    - name: {{ daemon }}
{%- endfor %}
