{#- Every node: the nftables firewall (default deny, one rule per reason). #}
{%- from "anycastlb/packages.jinja" import packages with context %}
{{ packages('common', ['nftables']) }}

{#- Connections that exist when the firewall is first loaded (Salt's own, an admin's SSH) are
    picked up by conntrack mid-stream, without their TCP window scaling: strict window tracking
    would call their packets invalid and drop them. Liberal tracking keeps them alive.
    (anycastlb.sysctl, not cmd.run with unless: a requisite check makes Salt load every state module.) #}
anycastlb-conntrack-liberal-persist:
  file.managed:
    - name: /etc/sysctl.d/60-anycastlb.conf
    - contents: |
        # managed by anycastlb: keep connections that predate the firewall alive
        net.netfilter.nf_conntrack_tcp_be_liberal = 1

anycastlb-conntrack-liberal:
  anycastlb.sysctl:
    - name: net.netfilter.nf_conntrack_tcp_be_liberal
    - value: 1
    - require:
      - file: anycastlb-conntrack-liberal-persist
