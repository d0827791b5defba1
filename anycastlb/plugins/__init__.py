"""Monitoring plugins anycastlb ships (Nagios/Icinga plugin API: exit 0/1/2/3, one line + perfdata).

Each module is a self-contained, standard-library-only script: the Icinga2 renderer
deploys its source as an executable under ``/usr/local/lib/anycastlb/plugins/`` on the
monitoring node, and the same functions are console entry points and unit-tested.
"""

#: Plugin files the Icinga2 renderer deploys (module file name → deployed name).
DEPLOYED = {
    "check_anycastlb_acme.py": "check_anycastlb_acme",
    "check_anycastlb_bird.py": "check_anycastlb_bird",
    "check_anycastlb_haproxy.py": "check_anycastlb_haproxy",
    "check_anycastlb_poll.py": "check_anycastlb_poll",
    "check_anycastlb_udp.py": "check_anycastlb_udp",
    "anycastlb_notify_log.py": "anycastlb_notify_log",
}
