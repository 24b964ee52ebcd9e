# The recall experiment, CPU size (under an hour on 2 free cores): JRT-RNN, Based and attention on MQAR at
# matched recurrent state sizes, each the best of two learning rates, then one markdown table (also
# written to out_dir/recall_table.md):
#   python train.py config/recall_cpu.py
# All three are Zoology's layout, conv, mixer, conv, mixer, with no sliding window (one as long as the
# input would be full attention), so JRT-RNN and Based carry the same state at each width
# (Model.state_size()); attention's KV cache at T = seq_len is the unbounded ceiling.
task = "mqar"
seq_len = 64
num_pairs = 8
vocab_size = 32              # a small vocabulary is learnt within a few hundred steps; 128+ needs far more
model = "jrt-tiny"           # n_head 4, the rest of each model; the grid sets layers and d_model
feature_dim = 4              # D = 1 + f + f^2 = 21: small states, where the paper expects the gap
init_std = 0.12              # the paper's 0.02 leaves linear attention on the 1/k plateau at this size
batch_size = 32
max_iters = 600
warmup_iters = 20
eval_interval = 600          # evaluate once, at the end
log_interval = 100
test_examples = 500
save_checkpoint = False
grid_layers = (("conv", "pla", "conv", "pla"), ("conv", "la", "conv", "la"), ("conv", "attn", "conv", "attn"))
grid_d_model = (8, 16, 32, 64)
grid_lr = (3e-3, 1e-2)
out_dir = "out-recall-cpu"
