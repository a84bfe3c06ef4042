"""Connections to nodes: ``local`` (a directory per node) and ``ssh`` (paramiko)."""
