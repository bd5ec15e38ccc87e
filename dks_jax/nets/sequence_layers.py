"""Haiku modules for the sequence layers of a layer specification: token embedding and self-attention.

They are built by the interpreter in ``builder`` from ``graph.Embed`` and ``graph.Attention`` nodes, and
take everything that shapes their initialization from the node, so the kernel graph
(``dks_jax.kernels.sequence``) and the module agree by construction:

* ``Embedding``: a one-hot matrix product with an N(0, 1) table (a dense layer, which K-FAC's graph matcher
  registers as such; a gather would only get a diagonal block), plus an optional learned positional
  embedding, the sum scaled by ``1 / sqrt(2)``.
* ``SelfAttention``: query, key, value and output projections; attention matrix
  ``D softmax(Q K^T / sqrt(d_head) + B + mask)`` with the fixed bias ``B`` and rescaling ``D`` of
  ``dks_jax.kernels.attention.softmax_parameters`` (none for plain softmax), optionally
  ``alpha I + beta A`` (Value-SkipInit, trainable scalars). Zero-initialized query weights make the matrix at
  initialization exactly ``attention.init_matrix(node, T)``.

Dense projections act on ``[batch * T, features]`` (reshaped) so that K-FAC sees ordinary dense layers.
"""

from __future__ import annotations

import math

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from dks_jax.kernels import attention as attention_lib
from dks_jax.kernels import graph as g
from dks_jax.nets import initializers


def dense(x: jax.Array, features: int, *, with_bias: bool, w_init: hk.initializers.Initializer,
          b_init: hk.initializers.Initializer, name: str | None) -> jax.Array:
    """``hk.Linear`` over the last axis of an input of any rank, applied to the flattened rows."""
    lead = x.shape[:-1]
    out = hk.Linear(features, with_bias=with_bias, w_init=w_init, b_init=b_init,
                    name=name)(x.reshape((-1, x.shape[-1])))
    return out.reshape(lead + (features,))


class Embedding(hk.Module):
    """Token (and optional learned positional) embedding of int ``[batch, T]`` inputs."""

    def __init__(self, node: g.Embed, name: str | None = None):
        super().__init__(name=name)
        self.node = node

    def __call__(self, tokens: jax.Array) -> jax.Array:
        node = self.node
        if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"Embed layer {self.module_name!r} needs int token ids of shape [batch, T], got "
                             f"{tokens.dtype} {tokens.shape}.")
        one_hot = jax.nn.one_hot(tokens, node.vocab_size, dtype=jnp.float32)
        table = initializers.StandardNormal(1.0)
        h = dense(one_hot, node.features, with_bias=False, w_init=table, b_init=None, name="token")
        if node.positional == "learned":
            position = hk.get_parameter("position", (tokens.shape[1], node.features), h.dtype, init=table)
            h = (h + position[None]) / math.sqrt(2.0)
        return h


class SelfAttention(hk.Module):
    """Multi-head self-attention of ``[batch, T, features]`` inputs as described by a ``graph.Attention``."""

    def __init__(self, node: g.Attention, w_init: hk.initializers.Initializer,
                 b_init: hk.initializers.Initializer, name: str | None = None):
        super().__init__(name=name)
        self.node = node
        self.w_init = w_init
        self.b_init = b_init

    def __call__(self, x: jax.Array) -> jax.Array:
        node = self.node
        if x.ndim != 3:
            raise ValueError(f"Attention layer {self.module_name!r} needs inputs of shape [batch, T, "
                             f"features], got {x.shape}.")
        batch, length, features = x.shape
        heads = node.num_heads
        if features % heads:
            raise ValueError(f"Attention layer {self.module_name!r}: {features} features are not divisible "
                             f"by {heads} heads.")
        head_dim = features // heads
        q_init = hk.initializers.Constant(0.0) if node.zero_query_init else self.w_init
        project = lambda name, init: dense(x, features, with_bias=True, w_init=init, b_init=self.b_init,
                                           name=name).reshape(batch, length, heads, head_dim)
        q, k, v = project("query", q_init), project("key", self.w_init), project("value", self.w_init)

        bias, scale = attention_lib.softmax_parameters(node, length)
        visible = np.isfinite(bias)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
        logits = logits + jnp.asarray(np.where(visible, bias, 0.0), logits.dtype)
        if not visible.all():
            logits = jnp.where(jnp.asarray(visible), logits, jnp.finfo(logits.dtype).min)
        weights = jax.nn.softmax(logits, axis=-1)
        if scale is not None:
            # The location-dependent rescaling D of signal preserving attention (fixed, per query row).
            weights = weights * jnp.asarray(scale, weights.dtype)[:, None]
        if node.value_skip is not None:
            alpha0, beta0 = node.value_skip
            alpha = hk.get_parameter("alpha", (), weights.dtype, init=hk.initializers.Constant(alpha0))
            beta = hk.get_parameter("beta", (), weights.dtype, init=hk.initializers.Constant(beta0))
            weights = alpha * jnp.eye(length, dtype=weights.dtype) + beta * weights
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, features)
        return dense(out, features, with_bias=True, w_init=self.w_init, b_init=self.b_init, name="output")
