"""``python -m deploy``: Voice Lab workers behind HAProxy (and coturn for relayed media).

Configuration for well-known tools, never a balancer or relay of our own:
:mod:`deploy.haproxy` writes HAProxy's configuration, :mod:`deploy.coturn`
coturn's, :mod:`deploy.processes` starts and stops the programs, and
:mod:`deploy.__main__` is the command line.
"""
