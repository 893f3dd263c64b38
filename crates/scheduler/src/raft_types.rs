//! openraft's type configuration and the conversions between openraft's types and the typed, versioned
//! protobuf messages (`*V1`) that travel between nodes and are stored in redb.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;

use aidos_api::v1 as pb;
use openraft::{BasicNode, Entry, EntryPayload, LeaderId, LogId, Membership, StoredMembership, Vote};

openraft::declare_raft_types!(
    /// aidos' Raft: commands are `CommandV1`, answers `CommandResultV1`, nodes are gRPC addresses.
    pub TypeConfig:
        D = pb::CommandV1,
        R = pb::CommandResultV1,
        NodeId = u64,
        Node = BasicNode,
        Entry = Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, BasicNode>;

/// A stored or received message could not be decoded into a Raft value.
#[derive(Debug, thiserror::Error)]
#[error("malformed raft message: {0}")]
pub struct Malformed(pub &'static str);

pub fn leader_id_to_pb(l: &LeaderId<NodeId>) -> pb::LeaderIdV1 {
    pb::LeaderIdV1 { term: l.term, node_id: l.node_id }
}
pub fn leader_id_from_pb(l: &pb::LeaderIdV1) -> LeaderId<NodeId> {
    LeaderId::new(l.term, l.node_id)
}

pub fn vote_to_pb(v: &Vote<NodeId>) -> pb::VoteV1 {
    pb::VoteV1 { leader_id: Some(leader_id_to_pb(&v.leader_id)), committed: v.committed }
}
pub fn vote_from_pb(v: &pb::VoteV1) -> Result<Vote<NodeId>, Malformed> {
    let l = v.leader_id.as_ref().ok_or(Malformed("vote.leader_id"))?;
    let mut vote = Vote::new(l.term, l.node_id);
    vote.committed = v.committed;
    Ok(vote)
}

pub fn log_id_to_pb(l: &LogId<NodeId>) -> pb::LogIdV1 {
    pb::LogIdV1 { leader_id: Some(leader_id_to_pb(&l.leader_id)), index: l.index }
}
pub fn log_id_from_pb(l: &pb::LogIdV1) -> Result<LogId<NodeId>, Malformed> {
    let lid = l.leader_id.as_ref().ok_or(Malformed("log_id.leader_id"))?;
    Ok(LogId::new(leader_id_from_pb(lid), l.index))
}
pub fn opt_log_id_to_pb(l: &Option<LogId<NodeId>>) -> Option<pb::LogIdV1> {
    l.as_ref().map(log_id_to_pb)
}
pub fn opt_log_id_from_pb(l: &Option<pb::LogIdV1>) -> Result<Option<LogId<NodeId>>, Malformed> {
    l.as_ref().map(log_id_from_pb).transpose()
}

pub fn membership_to_pb(m: &Membership<NodeId, BasicNode>) -> pb::MembershipV1 {
    pb::MembershipV1 {
        configs: m.get_joint_config().iter().map(|c| pb::NodeIdSetV1 { ids: c.iter().copied().collect() }).collect(),
        nodes: m.nodes().map(|(id, n)| (*id, n.addr.clone())).collect(),
    }
}
pub fn membership_from_pb(m: &pb::MembershipV1) -> Membership<NodeId, BasicNode> {
    let configs: Vec<BTreeSet<NodeId>> = m.configs.iter().map(|c| c.ids.iter().copied().collect()).collect();
    let nodes: BTreeMap<NodeId, BasicNode> = m.nodes.iter().map(|(id, a)| (*id, BasicNode::new(a))).collect();
    Membership::new(configs, nodes)
}

pub fn stored_membership_to_pb(m: &StoredMembership<NodeId, BasicNode>) -> pb::StoredMembershipV1 {
    pb::StoredMembershipV1 { log_id: opt_log_id_to_pb(m.log_id()), membership: Some(membership_to_pb(m.membership())) }
}
pub fn stored_membership_from_pb(m: &pb::StoredMembershipV1) -> Result<StoredMembership<NodeId, BasicNode>, Malformed> {
    let mem = m.membership.as_ref().map(membership_from_pb).unwrap_or_default();
    Ok(StoredMembership::new(opt_log_id_from_pb(&m.log_id)?, mem))
}

pub fn entry_to_pb(e: &Entry<TypeConfig>) -> pb::EntryV1 {
    use pb::entry_v1::Payload;
    let payload = match &e.payload {
        EntryPayload::Blank => Payload::Blank(true),
        EntryPayload::Normal(c) => Payload::Normal(c.clone()),
        EntryPayload::Membership(m) => Payload::Membership(membership_to_pb(m)),
    };
    pb::EntryV1 { log_id: Some(log_id_to_pb(&e.log_id)), payload: Some(payload) }
}
pub fn entry_from_pb(e: pb::EntryV1) -> Result<Entry<TypeConfig>, Malformed> {
    use pb::entry_v1::Payload;
    let log_id = log_id_from_pb(e.log_id.as_ref().ok_or(Malformed("entry.log_id"))?)?;
    let payload = match e.payload.ok_or(Malformed("entry.payload"))? {
        Payload::Blank(_) => EntryPayload::Blank,
        Payload::Normal(c) => EntryPayload::Normal(c),
        Payload::Membership(m) => EntryPayload::Membership(membership_from_pb(&m)),
    };
    Ok(Entry { log_id, payload })
}

pub fn snapshot_meta_to_pb(m: &SnapshotMeta) -> pb::SnapshotMetaV1 {
    pb::SnapshotMetaV1 {
        last_log_id: opt_log_id_to_pb(&m.last_log_id),
        last_membership: Some(stored_membership_to_pb(&m.last_membership)),
        snapshot_id: m.snapshot_id.clone(),
    }
}
pub fn snapshot_meta_from_pb(m: &pb::SnapshotMetaV1) -> Result<SnapshotMeta, Malformed> {
    Ok(SnapshotMeta {
        last_log_id: opt_log_id_from_pb(&m.last_log_id)?,
        last_membership: stored_membership_from_pb(m.last_membership.as_ref().ok_or(Malformed("meta.membership"))?)?,
        snapshot_id: m.snapshot_id.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_roundtrip_through_protobuf() {
        let lid = LogId::new(LeaderId::new(3, 2), 17);
        let m = Membership::new(
            vec![BTreeSet::from([1, 2, 3])],
            BTreeMap::from([
                (1, BasicNode::new("a:1")),
                (2, BasicNode::new("b:1")),
                (3, BasicNode::new("c:1")),
                (4, BasicNode::new("d:1")),
            ]),
        );
        for payload in [
            EntryPayload::Blank,
            EntryPayload::Normal(pb::CommandV1 { now_ms: 5, command: None }),
            EntryPayload::Membership(m),
        ] {
            let e = Entry::<TypeConfig> { log_id: lid, payload };
            let back = entry_from_pb(entry_to_pb(&e)).unwrap();
            assert_eq!(format!("{e:?}"), format!("{back:?}"));
        }
        let mut v = Vote::new(4, 1);
        v.committed = true;
        assert_eq!(vote_from_pb(&vote_to_pb(&v)).unwrap(), v);
    }
}
