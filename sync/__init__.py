"""Sync: the uplink wire format, the national 好差评 mapping and the reference central receiver.

`sync.wire` is the one definition of the batch body (CONTRACTS §6) that the hub's uplink and the
receiver both use; `sync.national` maps an evaluation to the provincial platform record (§6a);
`sync.receiver` is the reference central side behind `hallhub central`.
"""
