"""A Flax (linen) classifier on the digits data, trained on minibatches.

scikit-learn's 8×8 digits (1797 images, 10 classes, pixels scaled to
[0, 1]), a 64-64-10 tanh network written with ``flax.linen``, softmax
cross-entropy, minibatches of 64 and ggn's classification defaults (CG
with 5 products per step, curvature from 32 samples of each batch).
``model.apply`` is the ``apply_fn`` as it is: no adapter. Three epochs
print ``test accuracy 96.7%``, in float32. This is a README block.

    pip install "ggn_jax[examples]"   # flax, scikit-learn
    python examples/flax_digits.py
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import ggn_jax

class Classifier(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(nn.tanh(nn.Dense(64)(x)))

digits = load_digits()  # 8×8 images with pixel values 0..16: scale them to [0, 1]
x_train, x_test, y_train, y_test = train_test_split(
    digits.data / 16.0, digits.target, test_size=0.25, random_state=0,
    stratify=digits.target)
x_train, x_test = jnp.asarray(x_train, jnp.float32), jnp.asarray(x_test, jnp.float32)

model = Classifier()
params = model.init(jax.random.PRNGKey(0), x_train[:1])
tx = ggn_jax.ggn(model.apply, "softmax_cross_entropy")  # the classification defaults
state = tx.init(params)

@jax.jit
def step(params, state, x, y):
    # None: ggn takes the batch gradient it computes itself (no jax.grad here)
    updates, state = tx.update(None, state, params, batch=(x, y))
    return optax.apply_updates(params, updates), state

rng = np.random.default_rng(0)
for epoch in range(3):
    order = rng.permutation(len(y_train))
    for i in range(0, len(order) - 63, 64):  # minibatches of 64
        idx = order[i:i + 64]
        params, state = step(params, state, x_train[idx], y_train[idx])
accuracy = jnp.mean(model.apply(params, x_test).argmax(-1) == y_test)
print(f"test accuracy {float(accuracy):.1%}")
