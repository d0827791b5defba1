{#- The daemons this node runs, in the registry's order (nftables, apache2, haproxy,
    healthd, bird, icinga2): which ones is decided by the anycastlb package
    (`salt-call anycastlb.daemons`), not here. The healthd step also puts the
    node's VIPs on lo.
    On a systemd host (`salt-call anycastlb.units`) the unit files anycastlb ships
    are installed first, /etc/nftables.conf (Debian's nftables.service loads it at
    boot, before the network) includes our table, and every daemon's unit is
    enabled, so a rebooted node comes back by itself. #}
{#- First what this node no longer runs (a role it lost): stopped, disabled, its files and
    VIPs gone (`salt-call anycastlb.retire test=True` shows what). #}
anycastlb-retired:
  anycastlb.retired:
    - name: daemons this node no longer runs
{%- set units = salt['anycastlb.units']() %}
{%- for path, text in units.files | dictsort %}

anycastlb-unit-{{ path.split('/')[-1] }}:
  file.managed:
    - name: {{ path }}
    - contents: {{ text | json }}
    - mode: '0644'
    - onchanges_in:
      - cmd: anycastlb-units-daemon-reload
{%- endfor %}
{%- if units.files %}

anycastlb-units-daemon-reload:
  cmd.run:
    - name: systemctl daemon-reload
{%- endif %}
{%- if units.nft_include %}

anycastlb-nftables-conf-include:
  file.append:
    - name: /etc/nftables.conf
    - text: {{ units.nft_include | json }}
{%- endif %}
{%- for daemon in salt['anycastlb.daemons']() %}

anycastlb-{{ daemon }}:
  anycastlb.configured:
    - name: {{ daemon }}
{%- endfor %}
{%- for unit in units.enable %}

anycastlb-enable-{{ unit }}:
  service.enabled:
    - name: {{ unit }}
{%- endfor %}

{#- Last: the model this state run was given, for the rolling deploy's verify (anycastlb.verify
    with the plan's hash reads it instead of compiling the pillar again). #}
anycastlb-model-recorded:
  anycastlb.recorded:
    - name: the model this state run was given
