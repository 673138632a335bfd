//! Typed handles: a set, register, counter or map at a key (or nested in maps under it), whose
//! values are any serde type. An application reads and writes `T`s; the handle builds the
//! [`Op`]s and encodes values with [`value::encode`](crate::value::encode).

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
    /// another type than `wanted`; nothing written there reads as `empty`.
    async fn read<R>(
        &self,
        wanted: &'static str,
        empty: R,
        read: impl FnOnce(&Object) -> Option<Result<R, NodeError>>,
    ) -> Result<R, NodeError> {
        match self.object().await? {
            None | Some(Object::Empty) => Ok(empty),
            Some(object) => read(&object).unwrap_or_else(|| Err(wrong_type(&object, wanted))),
        }
    }

    /// The object at this place (`None`: nothing written there, or its map key removed). An
    /// object of another type than a map on the way is an error, as a write there would be.
    async fn object(&self) -> Result<Option<Object>, NodeError> {
        let Some(mut object) = self.node.get(&self.key).await else {
            return Ok(None);
        };
        for key in &self.path {
            object = match object {
                Object::Map(map) => match map.get(key) {
                    Some(value) => value.clone(),
                    None => return Ok(None),
                },
                Object::Empty => return Ok(None),
                other => return Err(wrong_type(&other, "map")),
            };
        }
        Ok(Some(object))
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
    pub async fn contains(&self, value: &T) -> Result<bool, NodeError> {
        let value = encode(value);
        self.0
            .read("set", false, |object| match object {
                Object::Set(set) => Some(Ok(set.contains(&value))),
                _ => None,
            })
            .await
    }

    /// The elements here, in the order of their encodings. Fails with [`NodeError::Value`] if
    /// an element does not decode as a `T`.
    pub async fn elements(&self) -> Result<Vec<T>, NodeError> {
        self.0
            .read("set", Vec::new(), |object| match object {
                Object::Set(set) => Some(decoded(set.iter())),
                _ => None,
            })
            .await
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
    pub async fn get(&self) -> Result<Option<T>, NodeError> {
        self.0
            .read("lww-register", None, |object| match object {
                Object::Lww(register) => Some(
                    register
                        .get()
                        .map(|v| decode(v))
                        .transpose()
                        .map_err(Into::into),
                ),
                _ => None,
            })
            .await
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
    pub async fn value(&self) -> Result<i64, NodeError> {
        self.0
            .read("pn-counter", 0, |object| match object {
                Object::PNCounter(c) => Some(Ok(c.value())),
                Object::GCounter(c) => Some(Ok(i64::try_from(c.value()).unwrap_or(i64::MAX))),
                _ => None,
            })
            .await
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

    /// The keys present here, in the order of their encodings.
    pub async fn keys(&self) -> Result<Vec<K>, NodeError> {
        self.0
            .read("map", Vec::new(), |object| match object {
                Object::Map(map) => Some(decoded(map.keys())),
                _ => None,
            })
            .await
    }

    /// Whether `key` is present here.
    pub async fn contains_key(&self, key: &K) -> Result<bool, NodeError> {
        let key = encode(key);
        self.0
            .read("map", false, |object| match object {
                Object::Map(map) => Some(Ok(map.contains_key(&key))),
                _ => None,
            })
            .await
    }
}
