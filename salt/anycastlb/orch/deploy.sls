{#- The rolling deploy: `salt-run state.orchestrate anycastlb.orch.deploy`.

    The order and the actions come from the runner (`salt-run anycastlb.plan`, logic in
    anycastlb/orchestrate.py); this file only lays them out as states. Every state is
    failhard: the first failure stops the run, the remaining nodes are left untouched,
    and the failed state's id names the node and the step (`drain lb1`, `apply lb1` ...).

    Optional pillar (salt-run state.orchestrate anycastlb.orch.deploy pillar='{...}'):
      anycastlb_deploy:
        timeout: 30        # seconds to wait for a drain, an undrain, a verify
        drain: auto        # auto: drain only nodes whose change may reach the routers
                           # (against the catalog deployed last); always: every node
        exclude: []        # state ids (or sls) left out of every node's apply
        nodes: []          # deploy only these nodes (still in plan order)
        rev: <commit>      # first check the master's catalog checkout out at this commit
                           # (the reactor passes the pushed commit; "" = fast-forward)
#}
{%- set opts = salt['pillar.get']('anycastlb_deploy', {}) %}
{%- set timeout = opts.get('timeout', 30) %}
{%- set only = opts.get('nodes', []) %}
{%- set rev = opts.get('rev') %}
{#- One deploy at a time: the lock is taken while this file renders (before the checkout
    and the plan) by the process that runs the orchestration, and given back by the last
    state. A deploy that stops on a failure frees it when its process ends. #}
{%- set lock = salt['saltutil.runner']('anycastlb.lock') %}
{%- set locked = lock is mapping and lock.get('result') %}

deploy lock:
  test.{{ 'succeed' if locked else 'fail' }}_without_changes:
    - name: "{{ (lock.get('comment') if lock is mapping else lock) | string | replace('"', "'") }}"
    - failhard: True
{%- if locked %}
{%- if rev is not none %}
{#- From the reactor (a push or your CI): bring the master's catalog checkout to the pushed
    commit first, so that the plan and the pillar are the new catalog's. #}
{%- set checkout = salt['saltutil.runner']('anycastlb.checkout', rev=rev) %}
{%- endif %}
{%- set plan = salt['saltutil.runner']('anycastlb.plan', drain=opts.get('drain', 'auto')) %}
{%- if rev is not none %}

catalog checkout:
  test.{{ 'succeed' if checkout is mapping and checkout.get('result') else 'fail' }}_without_changes:
    - name: "{{ (checkout.get('comment') if checkout is mapping else checkout) | string | replace('"', "'") }}"
    - failhard: True
{%- endif %}

lint catalog:
  salt.runner:
    - name: anycastlb.lint
    - failhard: True
{%- if plan is not mapping %}

plan:
  test.fail_without_changes:
    - name: "salt-run anycastlb.plan failed: {{ plan | string | replace('"', "'") }}"
    - failhard: True
{%- endif %}
{%- if plan is mapping and plan.get('result') %}
{%- for step in plan.get('steps', []) if not only or step.node in only %}
{%- set node = step.node %}
{%- if 'drain' in step.actions %}

drain {{ node }}:
  salt.runner:
    - name: anycastlb.drain
    - node: {{ node }}
    - reason: orchestrate
    - timeout: {{ timeout }}
    - failhard: True
{%- endif %}
{%- if 'remember' in step.actions %}

{#- Applied in place (its routing does not change): remember what it announces ... #}
remember {{ node }}:
  salt.runner:
    - name: anycastlb.remember
    - node: {{ node }}
    - failhard: True
{%- endif %}

{#- Only the anycastlb states (salt/anycastlb/init.sls), never the site's highstate. #}
apply {{ node }}:
  salt.state:
    - tgt: {{ node }}
    - sls: anycastlb
    - expect_minions: True
    - failhard: True
{%- if opts.get('exclude') %}
    - exclude: {{ opts.exclude | json }}
{%- endif %}

verify {{ node }}:
  salt.function:
    - name: anycastlb.verify
    - tgt: {{ node }}
    - kwarg: {{ {'pending': step.pending, 'timeout': timeout} | json }}
    - failhard: True
{%- if 'undrain' in step.actions %}

undrain {{ node }}:
  salt.runner:
    - name: anycastlb.undrain
    - node: {{ node }}
    - timeout: {{ timeout }}
    - failhard: True
{%- endif %}
{%- if 'announced' in step.actions %}

{#- ... and wait until the route reflectors carry all of it again. #}
announced {{ node }}:
  salt.runner:
    - name: anycastlb.announced
    - node: {{ node }}
    - timeout: {{ timeout }}
    - failhard: True
{%- endif %}
{%- endfor %}
{%- if not only and not opts.get('exclude') %}

{#- Every node has the planned catalog now: the next plan compares with it. #}
mark deployed:
  salt.runner:
    - name: anycastlb.mark_deployed
    - from_plan: True
    - failhard: True
{%- endif %}

{#- ACME: issue what the new catalog asks for (a service switched to ACME has bound 443 with a
    placeholder and routes the CA's challenges to the issuer by now) and hot-load it on its LB
    nodes. Not failhard: a CA's refusal keeps the old certificates and is the monitoring's alarm. #}
acme renew:
  salt.runner:
    - name: anycastlb.renew
{%- endif %}

deploy unlock:
  salt.runner:
    - name: anycastlb.unlock
    - order: last
{%- endif %}
