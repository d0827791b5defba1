{#- role haproxy: the node is in an HAProxy cluster: HAProxy, its health agent announces the cluster's VIPs. #}
{%- from "anycastlb/packages.jinja" import packages with context %}
{{ packages('haproxy', ['haproxy']) }}
