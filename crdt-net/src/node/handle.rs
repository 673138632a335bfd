//! Typed handles: a set, register, counter or map at a key (or nested in maps under it), whose
//! values are any serde type. An application reads and writes `T`s; the handle builds the
//! [`Op`]s and encodes values with [`value::encode`](crate::value::encode).
//!
//! Reads are synchronous (the `_now` getters) and copy nothing but their answer: they run
//! under the replica's read lock ([`Node::with`], which says what a read may wait for). The
//! async getters are the same reads, for callers that await.

use std::marker::PhantomData;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Ack, Change, Node, NodeError, Token, DEFAULT_ACK_TIMEOUT};
use crate::value::{decode, encode};
use crate::{Object, Op, TypeMismatch};

impl Node {
    /// The add-wins set at `key`, of `T`s.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let node = crdt_net::node::NodeBuilder::new(dir.path())
    /// #     .listen("127.0.0.1:0".parse()?).mdns(false).start().await?;
    /// let cart = node.set::<String>("cart");
    /// cart.add(&"milk".to_string()).await?;
    /// cart.add(&"eggs".to_string()).await?;
    /// cart.remove(&"milk".to_string()).await?;
    /// assert_eq!(cart.elements().await?, ["eggs"]);
    /// # node.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn set<T: Serialize + DeserializeOwned>(&self, key: &str) -> SetHandle<'_, T> {
        SetHandle(Handle::new(self, key))
    }

    /// The last-writer-wins register at `key`, holding a `T`. Writes are stamped by this
    /// node's hybrid logical clock.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let node = crdt_net::node::NodeBuilder::new(dir.path())
    /// #     .listen("127.0.0.1:0".parse()?).mdns(false).start().await?;
    /// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    /// struct Profile { name: String, age: u8 }
    ///
    /// let me = node.register::<Profile>("profile");
    /// assert_eq!(me.get().await?, None);
    /// me.set(&Profile { name: "Ada".into(), age: 36 }).await?;
    /// assert_eq!(me.get().await?.map(|p| p.age), Some(36));
    /// # node.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn register<T: Serialize + DeserializeOwned>(&self, key: &str) -> RegisterHandle<'_, T> {
        RegisterHandle(Handle::new(self, key))
    }

    /// The up-down counter at `key`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let node = crdt_net::node::NodeBuilder::new(dir.path())
    /// #     .listen("127.0.0.1:0".parse()?).mdns(false).start().await?;
    /// let stock = node.counter("apples");
    /// stock.inc(10).await?;
    /// stock.dec(3).await?;
    /// assert_eq!(stock.value().await?, 7);
    /// # node.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn counter(&self, key: &str) -> CounterHandle<'_> {
        CounterHandle(Handle::new(self, key))
    }

    /// The grow-only counter at `key`: it only goes up, and costs less than an up-down one
    /// ([`Node::counter`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let node = crdt_net::node::NodeBuilder::new(dir.path())
    /// #     .listen("127.0.0.1:0".parse()?).mdns(false).start().await?;
    /// let views = node.gcounter("page-views");
    /// assert_eq!(views.value_now()?, 0);
    /// views.inc(3).await?;
    /// views.inc(2).await?;
    /// assert_eq!(views.value_now()?, 5);
    /// # node.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn gcounter(&self, key: &str) -> GCounterHandle<'_> {
        GCounterHandle(Handle::new(self, key))
    }

    /// The multi-value register at `key`, holding `T`s: concurrent writes are all kept (for
    /// the application to reconcile) until a write that has seen them replaces them.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let node = crdt_net::node::NodeBuilder::new(dir.path())
    /// #     .listen("127.0.0.1:0".parse()?).mdns(false).start().await?;
    /// let title = node.mv_register::<String>("title");
    /// assert!(title.values_now()?.is_empty());
    /// title.set(&"Draft".to_string()).await?;
    /// title.set(&"Final".to_string()).await?; // this write saw "Draft": it replaces it
    /// assert_eq!(title.values_now()?, ["Final"]);
    /// # node.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn mv_register<T: Serialize + DeserializeOwned>(
        &self,
        key: &str,
    ) -> MvRegisterHandle<'_, T> {
        MvRegisterHandle(Handle::new(self, key))
    }

    /// The observed-remove map at `key`, with keys of type `K` and nested objects as values:
    /// its methods give handles to the values. Removing a key resets its value.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let node = crdt_net::node::NodeBuilder::new(dir.path())
    /// #     .listen("127.0.0.1:0".parse()?).mdns(false).start().await?;
    /// let carts = node.map::<u64>("carts"); // one cart per user id
    /// let ada = carts.set::<String>(&7);
    /// ada.add(&"milk".to_string()).await?;
    /// assert_eq!(carts.keys().await?, [7]);
    ///
    /// carts.remove(&7).await?; // the cart is emptied, not just hidden
    /// ada.add(&"tea".to_string()).await?;
    /// assert_eq!(ada.elements().await?, ["tea"]);
    ///
    /// // Another type under the same key is refused.
    /// assert!(carts.counter(&7).inc(1).await.is_err());
    /// # node.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn map<K: Serialize + DeserializeOwned>(&self, key: &str) -> MapHandle<'_, K> {
        MapHandle(Handle::new(self, key))
    }
}

/// What every handle holds: the node, where its object lives, and the acknowledgement level of
/// its writes.
struct Handle<'n, T> {
    node: &'n Node,
    key: String,
    /// Map keys from the object at `key` down to this one, outermost first.
    path: Vec<Vec<u8>>,
    ack: Ack,
    timeout: Duration,
    values: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Handle<'_, T> {
    fn clone(&self) -> Self {
        self.child_at(self.path.clone())
    }
}

impl<T> std::fmt::Debug for Handle<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("key", &self.key)
            .field("path", &self.path)
            .field("ack", &self.ack)
            .finish()
    }
}

impl<'n, T> Handle<'n, T> {
    fn new(node: &'n Node, key: &str) -> Self {
        Handle {
            node,
            key: key.to_owned(),
            path: Vec::new(),
            ack: Ack::Local,
            timeout: DEFAULT_ACK_TIMEOUT,
            values: PhantomData,
        }
    }

    /// A handle to the value under map key `child` of this handle's map.
    fn child<U>(&self, child: Vec<u8>) -> Handle<'n, U> {
        let mut path = self.path.clone();
        path.push(child);
        self.child_at(path)
    }

    fn child_at<U>(&self, path: Vec<Vec<u8>>) -> Handle<'n, U> {
        Handle {
            node: self.node,
            key: self.key.clone(),
            path,
            ack: self.ack,
            timeout: self.timeout,
            values: PhantomData,
        }
    }

    async fn write(&self, op: Op) -> Result<Token, NodeError> {
        self.node
            .update_acked(&self.key, wrap(&self.path, op), self.ack, self.timeout)
            .await
    }

    /// Reads the object at this place with `read`, which returns `None` for an object of
    /// another type than `wanted`; nothing written there (or its map key removed) reads as
    /// `empty`. An object of another type than a map on the way is an error, as a write there
    /// would be. Runs under the read lock and copies nothing (see [`Node::with`]).
    fn read<R>(
        &self,
        wanted: &'static str,
        empty: R,
        read: impl FnOnce(&Object) -> Option<Result<R, NodeError>>,
    ) -> Result<R, NodeError> {
        let found = self.node.with(&self.key, |mut object| {
            for key in &self.path {
                object = match object {
                    Object::Map(map) => match map.get(key) {
                        Some(value) => value,
                        None => return Ok(None),
                    },
                    Object::Empty => return Ok(None),
                    other => return Err(wrong_type(other, "map")),
                };
            }
            match object {
                Object::Empty => Ok(None),
                object => read(object)
                    .unwrap_or_else(|| Err(wrong_type(object, wanted)))
                    .map(Some),
            }
        })?;
        Ok(found.transpose()?.flatten().unwrap_or(empty))
    }
}

/// `op` applied at the end of `path`: wrapped in a map update per map key on it.
fn wrap(path: &[Vec<u8>], op: Op) -> Op {
    path.iter()
        .rev()
        .fold(op, |op, key| Op::Update(key.clone(), Box::new(op)))
}

/// The `acked` method of every handle (each wraps a [`Handle`] as its field `0`).
macro_rules! acked {
    () => {
        /// This handle with writes (its own, and for a map those of the handles it gives) that
        /// return once `ack` is met (see [`Node::update_acked`]).
        pub fn acked(mut self, ack: Ack, timeout: Duration) -> Self {
            self.0.ack = ack;
            self.0.timeout = timeout;
            self
        }
    };
}

/// Refuses reading `found` as `wanted`.
fn wrong_type(found: &Object, wanted: &'static str) -> NodeError {
    NodeError::WrongType(TypeMismatch {
        found: found.type_name(),
        wanted,
    })
}

/// Every value decoded as a `T`, or the first failure.
fn decoded<'a, T: DeserializeOwned>(
    values: impl Iterator<Item = &'a Vec<u8>>,
) -> Result<Vec<T>, NodeError> {
    Ok(values.map(|v| decode(v)).collect::<Result<_, _>>()?)
}

/// An add-wins set of `T`s; see [`Node::set`].
#[derive(Clone, Debug)]
pub struct SetHandle<'n, T>(Handle<'n, T>);

impl<T: Serialize + DeserializeOwned> SetHandle<'_, T> {
    acked!();

    /// Adds `value`. An add concurrent with a remove of the same value wins.
    pub async fn add(&self, value: &T) -> Result<Token, NodeError> {
        self.0.write(Op::Add(encode(value))).await
    }

    /// Removes `value` as this node has seen it (adds it has not seen survive).
    pub async fn remove(&self, value: &T) -> Result<Token, NodeError> {
        self.0.write(Op::Remove(encode(value))).await
    }

    /// Whether `value` is in the set here.
    pub fn contains_now(&self, value: &T) -> Result<bool, NodeError> {
        let value = encode(value);
        self.0.read("set", false, |object| match object {
            Object::Set(set) => Some(Ok(set.contains(&value))),
            _ => None,
        })
    }

    /// How many elements the set has here.
    pub fn len_now(&self) -> Result<usize, NodeError> {
        self.0.read("set", 0, |object| match object {
            Object::Set(set) => Some(Ok(set.len())),
            _ => None,
        })
    }

    /// The elements here, in the order of their encodings. Fails with [`NodeError::Value`] if
    /// an element does not decode as a `T`.
    pub fn elements_now(&self) -> Result<Vec<T>, NodeError> {
        self.0.read("set", Vec::new(), |object| match object {
            Object::Set(set) => Some(decoded(set.iter())),
            _ => None,
        })
    }

    /// [`contains_now`](SetHandle::contains_now), for callers that await.
    pub async fn contains(&self, value: &T) -> Result<bool, NodeError> {
        self.contains_now(value)
    }

    /// [`elements_now`](SetHandle::elements_now), for callers that await.
    pub async fn elements(&self) -> Result<Vec<T>, NodeError> {
        self.elements_now()
    }
}

/// A last-writer-wins register holding a `T`; see [`Node::register`].
#[derive(Clone, Debug)]
pub struct RegisterHandle<'n, T>(Handle<'n, T>);

impl<T: Serialize + DeserializeOwned> RegisterHandle<'_, T> {
    acked!();

    /// Writes `value`, stamped by this node's hybrid logical clock (later than every stamp
    /// it has issued or received).
    pub async fn set(&self, value: &T) -> Result<Token, NodeError> {
        let value = encode(value);
        let (key, path) = (self.0.key.clone(), self.0.path.clone());
        let shared = self.0.node.shared.clone();
        let change: Change = Box::new(move |replica| {
            let stamp = replica.stamp(shared.now());
            Ok(replica.update(&key, &wrap(&path, Op::Lww(stamp, value)))?)
        });
        self.0
            .node
            .change(change, self.0.ack, self.0.timeout)
            .await
            .map(|(token, _)| token)
    }

    /// The value here, if one is written.
    pub fn get_now(&self) -> Result<Option<T>, NodeError> {
        self.0.read("lww-register", None, |object| match object {
            Object::Lww(register) => Some(
                register
                    .get()
                    .map(|v| decode(v))
                    .transpose()
                    .map_err(Into::into),
            ),
            _ => None,
        })
    }

    /// [`get_now`](RegisterHandle::get_now), for callers that await.
    pub async fn get(&self) -> Result<Option<T>, NodeError> {
        self.get_now()
    }
}

/// An up-down counter; see [`Node::counter`].
#[derive(Clone, Debug)]
pub struct CounterHandle<'n>(Handle<'n, i64>);

impl CounterHandle<'_> {
    acked!();

    /// Adds `n`.
    pub async fn inc(&self, n: u64) -> Result<Token, NodeError> {
        self.0.write(Op::PnInc(n)).await
    }

    /// Subtracts `n`.
    pub async fn dec(&self, n: u64) -> Result<Token, NodeError> {
        self.0.write(Op::PnDec(n)).await
    }

    /// The value here (a grow-only counter written with [`Op::Inc`] reads as well).
    pub fn value_now(&self) -> Result<i64, NodeError> {
        self.0.read("pn-counter", 0, |object| match object {
            Object::PNCounter(c) => Some(Ok(c.value())),
            Object::GCounter(c) => Some(Ok(i64::try_from(c.value()).unwrap_or(i64::MAX))),
            _ => None,
        })
    }

    /// [`value_now`](CounterHandle::value_now), for callers that await.
    pub async fn value(&self) -> Result<i64, NodeError> {
        self.value_now()
    }
}

/// A grow-only counter; see [`Node::gcounter`].
#[derive(Clone, Debug)]
pub struct GCounterHandle<'n>(Handle<'n, u64>);

impl GCounterHandle<'_> {
    acked!();

    /// Adds `n`.
    pub async fn inc(&self, n: u64) -> Result<Token, NodeError> {
        self.0.write(Op::Inc(n)).await
    }

    /// The value here: the sum of every replica's increments.
    pub fn value_now(&self) -> Result<u64, NodeError> {
        self.0.read("g-counter", 0, |object| match object {
            Object::GCounter(c) => Some(Ok(c.value())),
            _ => None,
        })
    }
}

/// A multi-value register holding `T`s; see [`Node::mv_register`].
#[derive(Clone, Debug)]
pub struct MvRegisterHandle<'n, T>(Handle<'n, T>);

impl<T: Serialize + DeserializeOwned> MvRegisterHandle<'_, T> {
    acked!();

    /// Writes `value`, replacing every value this node has seen; writes made concurrently
    /// elsewhere stay beside it until a later write has seen them.
    pub async fn set(&self, value: &T) -> Result<Token, NodeError> {
        self.0.write(Op::Mv(encode(value))).await
    }

    /// The values here: one, or several written concurrently (ordered by their writes'
    /// dots); none if nothing is written. Fails with [`NodeError::Value`] if a value does not
    /// decode as a `T`.
    pub fn values_now(&self) -> Result<Vec<T>, NodeError> {
        self.0
            .read("mv-register", Vec::new(), |object| match object {
                Object::Mv(register) => Some(decoded(register.values())),
                _ => None,
            })
    }
}

/// An observed-remove map with keys of type `K`; see [`Node::map`].
#[derive(Clone, Debug)]
pub struct MapHandle<'n, K>(Handle<'n, K>);

impl<'n, K: Serialize + DeserializeOwned> MapHandle<'n, K> {
    acked!();

    /// The set under `key`.
    pub fn set<T: Serialize + DeserializeOwned>(&self, key: &K) -> SetHandle<'n, T> {
        SetHandle(self.0.child(encode(key)))
    }

    /// The last-writer-wins register under `key`.
    pub fn register<T: Serialize + DeserializeOwned>(&self, key: &K) -> RegisterHandle<'n, T> {
        RegisterHandle(self.0.child(encode(key)))
    }

    /// The counter under `key`.
    pub fn counter(&self, key: &K) -> CounterHandle<'n> {
        CounterHandle(self.0.child(encode(key)))
    }

    /// The map under `key`.
    pub fn map<K2: Serialize + DeserializeOwned>(&self, key: &K) -> MapHandle<'n, K2> {
        MapHandle(self.0.child(encode(key)))
    }

    /// Removes `key`, resetting its value: the updates of it this node has seen are gone
    /// everywhere; updates made concurrently elsewhere survive.
    pub async fn remove(&self, key: &K) -> Result<Token, NodeError> {
        self.0.write(Op::Delete(encode(key))).await
    }

    /// The grow-only counter under `key`.
    pub fn gcounter(&self, key: &K) -> GCounterHandle<'n> {
        GCounterHandle(self.0.child(encode(key)))
    }

    /// The multi-value register under `key`.
    pub fn mv_register<T: Serialize + DeserializeOwned>(&self, key: &K) -> MvRegisterHandle<'n, T> {
        MvRegisterHandle(self.0.child(encode(key)))
    }

    /// The keys present here, in the order of their encodings.
    pub fn keys_now(&self) -> Result<Vec<K>, NodeError> {
        self.0.read("map", Vec::new(), |object| match object {
            Object::Map(map) => Some(decoded(map.keys())),
            _ => None,
        })
    }

    /// Whether `key` is present here.
    pub fn contains_key_now(&self, key: &K) -> Result<bool, NodeError> {
        let key = encode(key);
        self.0.read("map", false, |object| match object {
            Object::Map(map) => Some(Ok(map.contains_key(&key))),
            _ => None,
        })
    }

    /// How many keys are present here.
    pub fn len_now(&self) -> Result<usize, NodeError> {
        self.0.read("map", 0, |object| match object {
            Object::Map(map) => Some(Ok(map.len())),
            _ => None,
        })
    }

    /// [`keys_now`](MapHandle::keys_now), for callers that await.
    pub async fn keys(&self) -> Result<Vec<K>, NodeError> {
        self.keys_now()
    }

    /// [`contains_key_now`](MapHandle::contains_key_now), for callers that await.
    pub async fn contains_key(&self, key: &K) -> Result<bool, NodeError> {
        self.contains_key_now(key)
    }
}
