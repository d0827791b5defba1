{#- role acme: the fleet's ACME issuer (the node with role acme, else the salt-master; see docs/acme.md).
    A Salt schedule on the issuer runs the renewal pass through the same path as
    `salt-run anycastlb.renew`: saltutil.runner on the master's own minion runs that runner, which
    renews what is due, hot-loads it on the LB nodes and reports to the monitoring nodes (a failed
    renewal keeps the old certificate and turns their `acme <service> renewal` check WARNING).
    Every 12 hours by default (pillar anycastlb:acme_renew_hours); the check warns after 25 h
    without a pass. #}
{%- set hours = salt['pillar.get']('anycastlb:acme_renew_hours', 12) %}
{%- if 'salt-master' in salt['pillar.get']('anycastlb:roles', []) %}
anycastlb-acme-renew:
  schedule.present:
    - function: saltutil.runner
    - job_args: [anycastlb.renew]
    - hours: {{ hours }}
    - splay: 300
    - maxrunning: 1
    - run_on_start: False   {#- a deploy renews right after its last node (orch.deploy, lab up) #}
    - persist: True
{%- else %}
{#- Issuance runs in the runner, on the master: its token server must listen on the issuer's address. #}
anycastlb-acme-issuer-is-the-master:
  test.fail_without_changes:
    - name: "role acme: the ACME issuer runs on the salt-master (its renewal runner); give the role acme to the master's node, or to no node (the master is the issuer then)"
{%- endif %}
