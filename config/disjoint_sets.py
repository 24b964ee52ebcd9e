# Set disjointness (JRT paper): `1 A 2 B 3`, predict the one token A and B share, on the paper's
# mixture of (|A|, |B|) shapes in both orders; test adds shorter and longer sets. 4 layers alternating
# BaseConv and linear attention, 2 heads. JRT-RNN reads the whole input as its prefix; compare with
#   python train.py config/disjoint_sets.py --model=based-tiny --out_dir=out-sd-based
# and read the per-shape accuracies: causal Based should do better when the smaller set comes first.
task = "disjoint_sets"
model = "jrt-tiny"           # conv, pla, conv, pla
d_model = 64
n_head = 2
feature_dim = 16
train_examples = 2000        # per shape (the paper: 20k; ~1 GB at T = 515)
test_examples = 200          # per shape
batch_size = 32
max_iters = 4000
warmup_iters = 200
lr = 1e-3
eval_interval = 500
out_dir = "out-sd"
