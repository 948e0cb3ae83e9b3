"""Sync: the push uplink, the national 好差评 mapping and the reference central receiver.

The batch body (CONTRACTS §6) is defined once in `contract.wire`, which the hub's uplink and the
receiver both use; `sync.national` maps an evaluation to the provincial platform record (§6a);
`sync.receiver` is the reference central side behind `hallhub central`.
"""
