"""The commented starter config that `gradaudit init` writes."""

STARTER_CONFIG = """\
# gradaudit config: which losses to audit and what their inputs look like.
# Run it:       gradaudit run gradaudit.yaml
# Check it:     gradaudit validate gradaudit.yaml
version: 1

# Extra import roots, relative to this file (this file's folder is always importable).
# sys_path: [src]

defaults:
  devices: [cpu, cuda]     # cuda is skipped, with the reason, where there is no GPU
  repeats: 2               # independent random draws (more are drawn to confirm a zero pattern)
  seed: 0

cases:
  # A function: "module.path:qualname", or "./file.py:qualname" relative to this file.
  - name: cross_entropy
    loss: torch.nn.functional:cross_entropy
    dims: {B: 8, C: 5}     # symbolic sizes; a list such as {B: [1, 8]} audits each value
    inputs:                # passed positionally, in this order
      logits: {shape: [B, C]}                       # floating: randn, requires grad
      target: {shape: [B], init: randint, high: 5}  # integer class labels
    expect:
      no_grad: [target]    # inputs allowed to get no gradient
    # per_sample: B        # the loss is a mean/sum of per-sample terms over B: check that each
    #                      # sample's gradient depends on that sample alone (finding batch-mixing);
    #                      # leave it out for in-batch negatives and other on-purpose coupling

  - name: mse
    loss: torch.nn.functional:mse_loss
    kwargs: {reduction: mean}
    inputs:
      prediction: {shape: [4, 3]}
      target: {shape: [4, 3], requires_grad: false}

  # A class (an nn.Module, say) is built with init_kwargs; its parameters are audited too.
  # - name: my_loss
  #   loss: ./losses.py:MyLoss
  #   init_kwargs: {margin: 1.0}
  #   inputs: ...
"""
