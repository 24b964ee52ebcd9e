# The recall experiment, GPU size (one GPU, a few hours): as config/recall_cpu.py on a harder MQAR
# setting (Zoology's T = 256), with the paper's feature dimension and wider models.
#   python train.py config/recall_gpu.py
task = "mqar"
seq_len = 256
num_pairs = 32
vocab_size = 256
train_examples = 100000
model = "jrt-tiny"
feature_dim = 16             # the paper's f: D = 273
init_std = 0.06
batch_size = 128
max_iters = 4000
warmup_iters = 200
eval_interval = 4000
log_interval = 200
test_examples = 1000
save_checkpoint = False
grid_layers = (("conv", "pla", "conv", "pla"), ("conv", "la", "conv", "la"), ("conv", "attn", "conv", "attn"))
grid_d_model = (32, 64, 128, 256)
grid_lr = (1e-3, 3e-3, 1e-2)
out_dir = "out-recall-gpu"
