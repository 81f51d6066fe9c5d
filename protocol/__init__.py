"""Wire layer: DAG-CBOR codec, CIDs, identities, framing and error codes. Pure: no trio, no sockets, no disk."""
