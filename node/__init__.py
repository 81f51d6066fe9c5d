"""Everything with I/O: vault, encrypted store, audit log, libp2p host, handlers, control API, CLI."""
