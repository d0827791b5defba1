{#- The rolling deploy: `salt-run state.orchestrate anycastlb.orch.deploy`.

    The order and the actions come from the runner (`salt-run anycastlb.plan`, logic in
    anycastlb/orchestrate/); this file only lays them out as states. Every state is
    failhard: the first failure stops the run, the remaining nodes are left untouched,
    and the failed state's id names the node and the step (`drain lb1`, `apply lb1` ...).

    Optional pillar (salt-run state.orchestrate anycastlb.orch.deploy pillar='{...}'):
      anycastlb_deploy:
        timeout: 30        # seconds to wait for a drain, an undrain, a verify, a decommission
        apply_timeout: 600 # seconds to wait for one node's state.apply
        drain: auto        # auto: drain only nodes whose change may reach the routers
                           # (against what each node last applied); always: every node
        exclude: []        # state ids (or sls) left out of every node's apply
        nodes: []          # deploy only these nodes (still in plan order)
        changed_only: false  # only the nodes whose model differs from the one they run
                           # (the reactor sets it: a push touches only what it changes)
        rev: <commit>      # first stage this commit of the catalog repository, lint it
                           # there, and only then switch the catalog the pillar reads
                           # (the reactor passes the pushed commit; "" = the branch head)

    `test=True` changes nothing anywhere: no lock taken (only checked: refused while another
    deploy runs), no checkout, no plan file; the plan of the catalog the pillar reads now is
    laid out and every state reports what it would do.
#}
{%- set cfg = salt['pillar.get']('anycastlb_deploy', {}) %}
{%- set dry = opts.get('test', False) %}
{%- set timeout = cfg.get('timeout', 30) | int %}
{%- set apply_timeout = cfg.get('apply_timeout', 600) | int %}
{%- set only = cfg.get('nodes', []) %}
{%- set rev = cfg.get('rev') %}
{#- One deploy at a time: the lock is taken while this file renders (before the checkout
    and the plan) by the process that runs the orchestration, and given back by the last
    state. A deploy that stops on a failure frees it when its process ends. #}
{%- set lock = salt['saltutil.runner']('anycastlb.lock', take=not dry) %}
{%- set locked = lock is mapping and lock.get('result') %}

deploy lock:
  test.{{ 'succeed' if locked else 'fail' }}_without_changes:
    - name: {{ (lock.get('comment') if lock is mapping else lock) | string | json }}
    - failhard: True
{%- if locked %}
{%- if rev is not none and not dry %}
{#- From the reactor (a push or your CI): stage the pushed commit, lint it there, and
    only then switch the catalog the pillar reads, so that the plan is the new catalog's. #}
{%- set checkout = salt['saltutil.runner']('anycastlb.checkout', rev=rev) %}
{%- else %}
{%- set checkout = {'result': True, 'comment': 'test=True: the commit ' ~ rev ~ ' would be staged, linted and switched to' if rev is not none else ''} %}
{%- endif %}
{%- set staged = checkout is mapping and checkout.get('result') %}
{%- if rev is not none %}

catalog checkout:
  test.{{ 'succeed' if staged else 'fail' }}_without_changes:
    - name: {{ ((checkout.get('comment') ~ ((': ' ~ checkout.get('errors') | join('; ')) if checkout.get('errors') else ''))
                if checkout is mapping else checkout) | string | json }}
    - failhard: True
{%- endif %}
{%- if staged %}
{%- set plan = salt['saltutil.runner']('anycastlb.plan', drain=cfg.get('drain', 'auto'), save=not dry,
                                      changed_only=cfg.get('changed_only', False) is sameas true) %}

lint catalog:
  salt.runner:
    - name: anycastlb.lint
    - failhard: True
{%- if plan is not mapping or not plan.get('result') %}

plan:
  test.fail_without_changes:
    - name: {{ ('salt-run anycastlb.plan failed: ' ~ ((plan.get('comment') ~ ' ' ~ (plan.get('errors') or []) | join('; ')) if plan is mapping else plan | string)) | json }}
    - failhard: True
{%- endif %}
{%- if plan is mapping and plan.get('result') %}
{%- for step in plan.get('steps', []) if not only or step.node in only %}
{%- set node = step.node %}
{%- if 'decommission' in step.actions %}

{#- Not in the catalog any more: drained, then its daemons stopped and disabled, its configs
    and VIPs removed, while it answers (salt-run anycastlb.decommission). #}
decommission {{ node }}:
  salt.runner:
    - name: anycastlb.decommission
    - node: {{ node }}
    - timeout: {{ timeout }}
    - failhard: True
{%- endif %}
{%- if 'drain' in step.actions %}

drain {{ node }}:
  salt.runner:
    - name: anycastlb.drain
    - node: {{ node }}
    - reason: orchestrate
    - timeout: {{ timeout }}
    - failhard: True
{%- endif %}
{#- Applied in place (its routing does not change, action "remember"): the plan recorded what
    it announces (from the status it reads of every BGP speaker) ... #}
{%- if 'apply' in step.actions %}

{#- Only the anycastlb states (salt/anycastlb/init.sls), never the site's highstate. #}
apply {{ node }}:
  salt.state:
    - tgt: {{ node }}
    - sls: anycastlb
    - expect_minions: True
    - timeout: {{ apply_timeout }}
    - failhard: True
{%- if cfg.get('exclude') %}
    - exclude: {{ cfg.exclude | json }}
{%- endif %}
{%- endif %}
{%- if 'verify' in step.actions %}

{#- Against the model the plan gave this node (the new catalog's), never the old one. #}
verify {{ node }}:
  salt.function:
    - name: anycastlb.verify
    - tgt: {{ node }}
    - kwarg: {{ {'pending': step.pending, 'timeout': timeout, 'expect': step.hash} | json }}
    - timeout: {{ timeout + 30 }}
    - failhard: True
{%- endif %}
{#- The next plan compares this node with what it runs now: recorded after its verify, by its
    undrain or announced step when it has one, else by "applied NODE". #}
{%- set record = 'verify' in step.actions and not cfg.get('exclude') %}
{%- if 'undrain' in step.actions %}

undrain {{ node }}:
  salt.runner:
    - name: anycastlb.undrain
    - node: {{ node }}
    - timeout: {{ timeout }}
{%- if record %}
    - applied: {{ step.hash | json }}
{%- endif %}
    - failhard: True
{%- endif %}
{%- if 'announced' in step.actions %}

{#- ... and wait until the route reflectors carry all of it again. #}
announced {{ node }}:
  salt.runner:
    - name: anycastlb.announced
    - node: {{ node }}
    - timeout: {{ timeout }}
{%- if record %}
    - applied: {{ step.hash | json }}
{%- endif %}
    - failhard: True
{%- endif %}
{%- if record and 'undrain' not in step.actions and 'announced' not in step.actions %}

applied {{ node }}:
  salt.runner:
    - name: anycastlb.mark_applied
    - node: {{ node }}
    - hash: {{ step.hash | json }}
    - failhard: True
{%- endif %}
{%- endfor %}
{%- if not only and not cfg.get('exclude') %}

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
{%- endif %}
{%- if not dry %}

deploy unlock:
  salt.runner:
    - name: anycastlb.unlock
    - order: last
{%- endif %}
{%- endif %}
