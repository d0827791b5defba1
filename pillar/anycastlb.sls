# Site settings merged with what the anycastlb ext_pillar supplies under the same key.
anycastlb:
  # install haproxy, bird2, apache2, icinga2, nftables, monitoring-plugins by role
  # (False where the packages are already there, as in the lab and the tests)
  manage_packages: True
