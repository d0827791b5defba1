{#- An example of the SITE's own top file (/srv/salt/top.sls), not shipped in salt/: the
    anycastlb states live under the `anycastlb` sls namespace and a site gives them to its
    minions beside its own states. `anycastlb` is empty on a minion the catalog does not
    name, so '*' is safe; a narrower target works too (e.g. `'anycastlb:node:*'` with
    `- match: pillar`). See docs/install.md. #}
base:
  '*':
    - anycastlb
