-- node.drain / node.undrain (§8.2): each node's last drain fact (stored by placement on
-- node.draining.<node_id> in NODES), the newest by its `at` whatever the arrival order. Its own table,
-- not columns of `nodes`: a node may be drained before its first status, and a status upsert must
-- not undo a drain. node.list joins it: a drained node that reports active is listed `draining`.
CREATE TABLE node_drains (
    node_id  text        PRIMARY KEY,
    draining boolean     NOT NULL,
    at       timestamptz NOT NULL,
    reason   text
);
