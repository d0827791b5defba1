# Example pillar top. The node models and their secrets come from the anycastlb
# ext_pillar (see docs/salt.md), not from here: this top only adds site settings.
base:
  '*':
    - anycastlb
