"""The Keras side of a member: bodies, the head per output kind, pretrained backbones, tuning.

- :mod:`.bodies` — named architectures (IncliNET's model4/5/6, compact, lean, tiny)
  and the isophote-moment branch;
- :mod:`.heads` — heads, losses and targets per task kind, and the MC-dropout
  training/export model pair;
- :mod:`.backbones` — saved bodies for transfer learning, ImageNet MobileNet from a
  local file;
- :mod:`.tuning` — keras-tuner random search for a user's catalog.

TensorFlow loads only when a model is built.
"""
