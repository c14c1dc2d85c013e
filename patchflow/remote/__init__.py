"""Remote deploy over SSH: hosts, the session, transfer, detached runs, fleets, provisioning and the server side.

The same tasks run on every host (``python -m patchflow apply-patch ...`` in the server's
checkout); this package only moves the patch, starts those tasks so that they survive the SSH
connection, follows them and reads their outcome. Modules, by concern:

* :mod:`~patchflow.remote.hosts`: the inventory's hosts and ``--host/--hosts/--role`` selection;
* :mod:`~patchflow.remote.session`: one SSH connection and the host-key policy (the only module
  importing Fabric or Paramiko);
* :mod:`~patchflow.remote.wire`: the typed documents crossing SSH (host facts, run records,
  receive-patch's answer), read and written by both sides;
* :mod:`~patchflow.remote.facts`: ``host-facts`` run over SSH and its answer checked;
* :mod:`~patchflow.remote.transfer`: the verified local patch and the resumable upload;
* :mod:`~patchflow.remote.runs` and :mod:`~patchflow.remote.outcome`: detached runs (launch,
  follow, attach) and how their true outcome is judged;
* :mod:`~patchflow.remote.fleet`, :mod:`~patchflow.remote.gates`, :mod:`~patchflow.remote.rolling`:
  several hosts at once, the refusals before anything is sent, and deploy/rollback/attach rolling;
* :mod:`~patchflow.remote.provision`: ``setup-host``;
* :mod:`~patchflow.remote.serverside`: what runs on the server (``host-facts``, ``receive-patch``).

The shell text sent to servers is built in :mod:`patchflow.commands.remote`.
"""
