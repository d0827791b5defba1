{#- `state.apply anycastlb.install`: the anycastlb package on a minion, into the Python that
    runs Salt, because the execution and state modules import it in the salt-minion
    process. With it come `anycastlb-healthd` (run by the `healthd` step of
    `anycastlb.daemons`, as `<that python> -m anycastlb.healthd` when the script is not on
    PATH) and the Icinga plugins. Apply it before the first `state.apply anycastlb`, and
    again to upgrade (docs/install.md).

    Where it goes is Salt's own pip logic (`pip.installed` without `bin_env`):
      - onedir Salt (the Salt project's packages): the onedir's extras directory, what
        `salt-pip install` does; it survives upgrades of the salt packages;
      - Salt installed with pip (a venv): that venv.
    A `bin_env` installs elsewhere (a venv for healthd alone): then the minion's Python
    still needs the package for the modules.

    Pillar (optional):
      anycastlb_install:
        requirement: anycastlb==0.1.0   # pin it to the master's version (default: anycastlb)
        index_url: https://pypi.example.org/simple   # or find_links: a directory of wheels
        find_links: /srv/wheels         # a directory or URL of wheels, as pip takes it
        bin_env: /opt/anycastlb/venv    # see above
        no_deps: False                  # True: the dependencies are there already (pyyaml,
                                        # jinja2, netaddr, pydantic 2, e.g. Debian packages)
#}
{%- set i = salt['pillar.get']('anycastlb_install', {}) %}
anycastlb-package:
  pip.installed:
    - name: {{ i.get('requirement', 'anycastlb') | json }}
{%- if i.get('index_url') %}
    - index_url: {{ i.index_url | json }}
{%- endif %}
{%- if i.get('find_links') %}
    - find_links: {{ i.find_links | json }}
{%- endif %}
{%- if i.get('no_deps') %}
    - no_deps: True
{%- endif %}
{%- if i.get('bin_env') %}
    - bin_env: {{ i.bin_env | json }}
{%- endif %}
    - reload_modules: True
