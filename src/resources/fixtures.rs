//! Objects the builders' unit tests share.

use super::members::Blueprint;

/// The blueprint of DatabaseMirror `shop-db` in namespace `customer-a`.
pub fn shop_db() -> Blueprint {
    let spec = serde_yaml::from_str("instance: {image: 'postgres:15', storage: {size: 1Gi}}").unwrap();
    let mut dbm = crate::api::DatabaseMirror::new("shop-db", spec);
    dbm.metadata.namespace = Some("customer-a".into());
    dbm.metadata.uid = Some("uid-db".into());
    super::databasemirror::blueprint(&dbm).unwrap()
}
