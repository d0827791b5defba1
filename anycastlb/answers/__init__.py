"""Reading what the daemons answer: one parser per foreign format, shared by every caller.

The parsers themselves live in the monitoring plugins (:mod:`anycastlb.plugins`), which
must stay standard-library-only scripts: the Icinga2 renderer deploys each as a single
file on the monitoring node, where the anycastlb package need not be installed. The core
imports them from there, so the health agent, the plugins, the orchestration (runner and
minion) and the lab read BIRD's and HAProxy's answers with the same code:

- BIRD ``show route [...] all``: :func:`anycastlb.plugins.check_anycastlb_bird.parse_routes`;
- BIRD ``show protocols [all]``: :func:`anycastlb.plugins.check_anycastlb_bird.parse_protocols`;
- HAProxy ``show stat`` / ``;csv``: :func:`anycastlb.plugins.check_anycastlb_haproxy.parse_show_stat`.

:mod:`.bird` and :mod:`.haproxy` hold what the core asks of those answers.
"""
