{#- Bootstrap a fresh node into Salt, over salt-ssh (no minion needed):

      anycastlb roster CATALOG --priv KEY > /etc/anycastlb/roster   # its own file, never /etc/salt/roster
      salt-ssh --roster-file=/etc/anycastlb/roster NODE state.apply anycastlb.bootstrap.minion

    Installs salt-minion, writes /etc/salt/minion.d/anycastlb.conf (id = the minion id,
    master = the catalog's salt-master node) and starts the minion. The differences
    between sites are pillar values (`anycastlb_bootstrap`), not branches:

      anycastlb_bootstrap:
        install: pkg           # pkg: the package below | pip: salt-pip/pip | none: already there
        package: salt-minion   # pkg name (Debian: salt-minion from the Salt repository)
        pip: salt==3008.4      # pip requirement when install: pip
        start: service         # service: the init system's salt-minion | daemon: `command` -d
        command: salt-minion -d
        master: 198.51.100.2   # default: the catalog's salt-master address (from the roster)
        config: {}             # more minion settings (module_dirs, timeouts ...)
#}
{%- set b = salt['pillar.get']('anycastlb_bootstrap', {}) %}
{%- set minion_id = grains['id'] %}
{%- set master = b.get('master') or salt['config.get']('anycastlb_master') or 'salt' %}
{%- set conf = {'id': minion_id, 'master': master} %}
{%- do conf.update(b.get('config', {})) %}

{%- if b.get('install', 'pkg') == 'pkg' %}
anycastlb-bootstrap-install:
  pkg.installed:
    - name: {{ b.get('package', 'salt-minion') }}
    - require_in:
      - file: anycastlb-bootstrap-config
{%- elif b.get('install') == 'pip' %}
anycastlb-bootstrap-install:
  pip.installed:
    - name: {{ b.get('pip', 'salt') }}
    - require_in:
      - file: anycastlb-bootstrap-config
{%- endif %}

anycastlb-bootstrap-config:
  file.managed:
    - name: /etc/salt/minion.d/anycastlb.conf
    - makedirs: True
    - mode: '0644'
    - contents: |
        # managed by anycastlb (salt/anycastlb/bootstrap/minion.sls): this node's Salt minion
        {{ conf | yaml(False) | indent(8) }}

anycastlb-bootstrap-minion-id:
  file.managed:
    - name: /etc/salt/minion_id
    - contents: {{ minion_id }}

{%- if b.get('start', 'service') == 'service' %}
anycastlb-bootstrap-start:
  service.running:
    - name: salt-minion
    - enable: True
    - watch:
      - file: anycastlb-bootstrap-config
{%- else %}
anycastlb-bootstrap-start:
  cmd.run:
    - name: {{ b.get('command', 'salt-minion -d') }}
    - unless: test -f /run/salt-minion.pid && kill -0 "$(cat /run/salt-minion.pid)"
    - require:
      - file: anycastlb-bootstrap-config
      - file: anycastlb-bootstrap-minion-id
{%- endif %}
