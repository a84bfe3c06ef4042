"""The bench job as a pyinfra deploy (python -m bench writes the inventory).

    pyinfra -y --parallel N inventory.py bench/pyinfra_deploy.py
"""

from pyinfra import host
from pyinfra.operations import files, server
from pyinfra.operations.util import any_changed

files.directory(name="Kong directory", path="/etc/kong", mode="755")
files.directory(name="Cluster directory", path="/etc/kong/cluster", mode="755")
conf = files.put(name="kong.conf", src=host.data.conf_src, dest="/etc/kong/kong.conf",
                 mode=host.data.conf_mode)
crt = files.put(name="Cluster certificate", src=host.data.cert_src,
                dest="/etc/kong/cluster/cluster.crt", mode="644")
key = files.put(name="Cluster key", src=host.data.key_src,
                dest="/etc/kong/cluster/cluster.key", mode="600")
server.shell(name="Restart kong", commands=[host.data.restart_cmd],
             _if=any_changed(conf, crt, key))
