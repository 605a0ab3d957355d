"""``caffe train`` on PyTorch.

``lr_policy`` (Caffe's learning-rate policies), ``updates`` (ApplyUpdate and the six solver
types), ``solver`` (the training loop: Solve/Step/Test/Snapshot/Restore), ``snapshot``
(caffemodel + solverstate + our resume sidecar), ``feeds`` (prefetched, timed data),
``distributed`` (torchrun / DDP), ``signals`` (sigint/sighup effects), ``caffe_log`` and
``plot_log`` (Caffe-format logs and their charts).
"""
