"""ocibuild: a daemonless OCI image manipulator and Cloud Native Buildpacks builder.

The package is layered: ``ocibuild.oci`` (pure model), ``ocibuild.store`` (layout directories and
registries behind one interface), ``ocibuild.transfer`` (graph copy), ``ocibuild.layer`` (tars),
``ocibuild.cnb`` (buildpacks), ``ocibuild.ledger`` (SQLite ledger, leases, GC) and ``ocibuild.cli``.
Imports stay lazy so that ``ocibuild --help`` is fast.
"""

__version__ = "0.1.0"
