{#- Reactor for `anycastlb/catalog/changed` (sent by the catalog repository's
    post-receive hook, or by your CI) and for the salt-api webhook
    `salt/netapi/hook/anycastlb/catalog/changed`. Event data: {"rev": "<commit>"} (optional).
    Runs the orchestration asynchronously on the master; its result is an event and
    a job (`salt-run jobs.list_jobs search_function=runner.state.orchestrate`). #}
{#- The event's data is untrusted: it goes in as JSON (a YAML flow scalar, quoted), never as
    YAML text; the runner refuses a rev that is not a commit id. #}
{%- set rev = (data.get('post') or data).get('rev', '') if data is mapping else '' %}
anycastlb-catalog-changed:
  runner.state.orchestrate:
    - args:
      - mods: anycastlb.orch.deploy
      - pillar: {{ {'anycastlb_deploy': {'rev': rev | string, 'changed_only': true}} | json }}
