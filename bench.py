"""Benchmarks: what a BayesNAS search and a retraining cost on this device.

    python bench.py                      # full measurements on the current device (CUDA if present)
    python bench.py --gpu 0 --compile    # also torch.compile variants
    python bench.py --quick              # a small CPU smoke run at toy sizes, for CI

Every figure is the median of repeated runs after warm-up runs, with CUDA synchronised around each:
  1. supernet training step exactly as search.py takes it (forward, cross-entropy, backward,
     clipping, SGD on the weights, proximal Adam on the switches, whose proximal part is the HARD
     penalty): images/s and peak memory of the default search network at several
     batch sizes; fp32, bf16 autocast, channels_last (and with --compile torch.compile, default mode
     and CUDA graphs, its compilation timed apart);
  2. each curvature estimator's time per batch as a ratio to one training step on the same batch, and
     how well 'recursive' and 'fisher' rank the switches against the exact 'ggn' (Spearman);
  3. the HARD update + pruning, and the derivation of a genotype;
  4. how the step time falls as 25 %, 50 %, 75 % of the operations are pruned;
  5. evaluation-network training (DARTS_V2 and BayesNAS at the retraining configuration);
  6. the proxyless space: its supernet's training step at the paper's batch 32 and the activation
     memory autograd keeps per image (so the batch that fits a GPU), the Fisher curvature per batch,
     and ProxylessNAS-G's retraining step at batch 64;
and projects the wall time of a full CIFAR-10 search and of the 600-epoch retraining (proxyless: of
its search and of the 300-epoch retraining).
Prints a table and writes JSON (--out).
"""
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import bayesnas
import derive
import genotypes
import proxyless
import search
import utils
from hessian import METHODS, switch_curvature
from model_search import NetworkCIFAR, ProxylessNetwork

CIFAR_TRAIN = 50000


# ----------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------

def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def timed(fn, device, warmup, repeats, first=None):
    """Median seconds of fn() over `repeats` calls after `warmup` calls; a list passed as `first`
    receives the seconds of the first call (where a compiled function compiles)."""
    for i in range(warmup):
        t0 = time.perf_counter()
        fn()
        if i == 0 and first is not None:
            sync(device)
            first.append(time.perf_counter() - t0)
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def reset_peak(device):
    if device.type == 'cuda':
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def batch(n, device, classes=10):
    return torch.randn(n, 3, 32, 32, device=device), torch.randint(0, classes, (n,), device=device)


# ----------------------------------------------------------------------------------------------------
# The measured steps
# ----------------------------------------------------------------------------------------------------

def make_search(cfg, device, batch_size, amp=False, channels_last=False, data=None):
    """search.py's own Search object (model, prior, optimiser, training step) for this configuration."""
    argv = ['--init_channels', str(cfg['C']), '--layers', str(cfg['layers']), '--batch_size', str(batch_size),
            '--no-amp' if not amp else '--amp', '--no-channels_last' if not channels_last else '--channels_last']
    argv += ['--data', str(data)] if data is not None else []
    args = search.space_defaults(search.build_parser().parse_args(argv))
    torch.manual_seed(0)
    return search.Search(args, device, run=None, steps_in={})


def variants(device, compile_too):
    """(name, bf16, channels_last, torch.compile mode or None) to measure on this device. The scripts'
    default is fp32, with channels_last on CUDA (they keep the CPU on the default memory format: see
    search.py); 'graphs' is torch.compile's reduce-overhead mode (CUDA graphs), what --compile uses."""
    if device.type != 'cuda':
        return [('fp32', False, False, None)] + ([('fp32+compile', False, False, 'default')] if compile_too else [])
    out = [('fp32', False, False, None), ('fp32+channels_last', False, True, None),
           ('bf16+channels_last', True, True, None)]
    return out + ([('fp32+channels_last+compile', False, True, 'default'),
                   ('fp32+channels_last+graphs', False, True, 'reduce-overhead'),
                   ('bf16+channels_last+graphs', True, True, 'reduce-overhead')] if compile_too else [])


def search_step_rate(s, device, x, y, cfg):
    s.model.train()
    return timed(lambda: s.train_step(x, y, 'search'), device, cfg['warmup'], cfg['repeats'])


def bench_search_step(cfg, device, compile_too):
    rows = []
    for bs in cfg['batch_sizes']:
        for name, bf16, cl, mode in variants(device, compile_too):
            s = make_search(cfg, device, bs, bf16, cl)
            if mode:
                s.forward = torch.compile(s.model, mode=mode, dynamic=False)
            x, y = batch(bs, device)
            reset_peak(device)
            t0, first = time.perf_counter(), []
            s.model.train()
            sec = timed(lambda: s.train_step(x, y, 'search'), device, cfg['warmup'], cfg['repeats'], first)
            rows.append(dict(batch_size=bs, variant=name, step_s=sec, images_per_s=bs / sec,
                             peak_mib=utils.peak_memory_mib(device), wall_s=time.perf_counter() - t0, first_step_s=first[0]))
            show_search_step(rows[-1])
            del s
    return rows


def flat(curv):
    return torch.cat([v.flatten() for v in curv.values()]).double().cpu()


def warm_up(s, device):
    """search.py's warm-up epoch (weights only, switches at 1) on real images; returns a plain batch
    of the switch-training part for the curvature, and the warm-up's final training accuracy."""
    parts = search.make_data(s.args, device)
    s.method.start_phase('warmup')
    s.model.train()
    for x, y in parts['warmup']:
        s.train_step(x, y, 'warmup')
    loss, hits, images = s.sums.tolist()
    s.method.start_phase('search')
    return next(iter(parts['curvature'])), 100 * hits / max(images, 1)


def bench_curvature(cfg, device, data=None):
    """Each estimator's cost per batch relative to a training step, its ranking against 'ggn', and
    the time of the HARD update, pruning and derivation. With `data` (a CIFAR-10 folder) the supernet
    first takes search.py's warm-up epoch on real images and the curvature is measured on a real
    batch; otherwise on noise images after a few steps."""
    bs = cfg['search_batch']
    s = make_search(cfg, device, bs, channels_last=True, data=data)
    result = dict(batch_size=bs, switches=len(s.method.switches), images='noise')
    if data is not None:
        (x, y), acc = warm_up(s, device)
        result.update(images=f'CIFAR-10 from {data}, after the warm-up epoch', warmup_train_acc=acc)
    else:
        x, y = batch(bs, device)
    # A few steps at the measured batch also set the timing baseline (their updates are tiny).
    train_s = search_step_rate(s, device, x, y, cfg)
    result['train_step_s'] = train_s
    curv = {}
    for method in METHODS:
        def run(method=method):
            curv[method] = switch_curvature(s.model, [(x, y)], method)
        sec = timed(run, device, 1, cfg['repeats'])
        result[method] = dict(seconds=sec, ratio_to_train_step=sec / train_s)
    draws = cfg['fisher_draws']
    fisher_avg = sum(flat(switch_curvature(s.model, [(x, y)], 'fisher')) for _ in range(draws)) / draws
    ggn = flat(curv['ggn'])
    result['spearman_vs_ggn'] = {'recursive': utils.spearman(flat(curv['recursive']), ggn),
                                 'fisher, 1 draw': utils.spearman(flat(curv['fisher']), ggn),
                                 f'fisher, mean of {draws}': utils.spearman(fisher_avg, ggn)}
    # Scale matters too: lambda is compared with the curvature in the update.
    measured = ggn > 0
    result['median_ratio_to_ggn'] = {
        'recursive': float((flat(curv['recursive'])[measured] / ggn[measured]).median()),
        f'fisher, mean of {draws}': float((fisher_avg[measured] / ggn[measured]).median())}

    def update():
        prior = s.model.build_prior(s.args.lam, s.args.lam)
        prior.update(curv[s.args.hessian], rule=s.args.update)
        prior.prune(s.args.threshold)
    result['update_prune_s'] = timed(update, device, 1, cfg['repeats'])
    s.method.prior.update(curv[s.args.hessian], rule=s.args.update)
    rows = bayesnas.gamma_rows(s.model, s.method.prior)
    threshold = sorted(r['gamma'] for r in rows)[len(rows) // 2]
    result['derive_s'] = timed(lambda: derive.derive_from_table(rows, threshold=threshold, space=s.space), device, 1,
                               cfg['repeats'])
    return result


def bench_pruned(cfg, device):
    """Step time as a growing share of the supernet's operations is pruned (random op switches)."""
    bs = cfg['search_batch']
    x, y = batch(bs, device)
    rows = []
    for share in (0.0, 0.25, 0.5, 0.75):
        s = make_search(cfg, device, bs, channels_last=True)
        ops = [d['key'] for d in s.model.switch_info() if d['op'] is not None]
        keys = sorted(set(ops))
        dead = set(random.Random(0).sample(keys, int(share * len(keys))))
        modules = dict(s.model.named_modules())
        for d in s.model.switch_info():
            if d['key'] in dead:
                sw = modules[d['name']]
                sw.prune_(torch.ones_like(sw.mask, dtype=torch.bool))
        sec = search_step_rate(s, device, x, y, cfg)
        rows.append(dict(pruned_share=share, step_s=sec, images_per_s=bs / sec))
        show_pruned(rows[-1])
    return rows


def bench_eval_networks(cfg, device, compile_too):
    rows = []
    for arch in ('DARTS_V2', 'BayesNAS'):
        for name, bf16, cl, mode in variants(device, compile_too):
            torch.manual_seed(0)
            net = NetworkCIFAR(cfg['eval_C'], 10, cfg['eval_layers'], True, genotypes.from_name(arch),
                               drop_path_prob=0.2).to(device)
            if cl:
                net = net.to(memory_format=torch.channels_last)
            model = torch.compile(net, mode=mode, dynamic=False) if mode else net
            net.train()
            opt = torch.optim.SGD(net.parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
            x, y = batch(cfg['eval_batch'], device)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)

            def step():
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    logits, aux = model(x)
                loss = F.cross_entropy(logits.float(), y) + 0.4 * F.cross_entropy(aux.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(net.parameters(), 5.0)
                opt.step()
            reset_peak(device)
            first = []
            sec = timed(step, device, cfg['warmup'], cfg['repeats'], first)
            rows.append(dict(arch=arch, variant=name, params_M=utils.count_params(net) / 1e6,
                             batch_size=cfg['eval_batch'], images_per_s=cfg['eval_batch'] / sec,
                             peak_mib=utils.peak_memory_mib(device), first_step_s=first[0]))
            show_eval(rows[-1])
            del net, model, opt
    return rows


def saved_bytes(model, x, y):
    """Bytes of the distinct tensors autograd keeps for the backward pass of one loss on (x, y)."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        F.cross_entropy(model(x), y)
    return sum(storages.values())


def bench_proxyless(cfg, device):
    """The proxyless supernet's step as search.py takes it, its saved activations per image (which set
    the batch that fits a GPU of 80 GB), the Fisher curvature per batch, and the retraining step of
    ProxylessNAS-G's ops at the same size (the published network itself at the full size)."""
    p = cfg['proxyless']
    argv = ['--space', 'proxyless', '--init_channels', str(p['C']), '--alpha', str(p['alpha']),
            '--layers', str(p['N']), '--batch_size', str(p['batch']), '--no-channels_last']
    args = search.space_defaults(search.build_parser().parse_args(argv))
    torch.manual_seed(0)
    s = search.Search(args, device, run=None, steps_in={})
    per_image = saved_bytes(s.model, *batch(2, device)) / 2
    weights = sum(w.numel() for w in s.weights) * 4 * 3        # fp32 weights, gradients, momentum
    row = dict(kind='supernet', size=f"C {p['C']}, alpha {p['alpha']}, {p['N']} blocks per stage",
               batch_size=p['batch'], saved_mib_per_image=per_image / 2 ** 20, weights_mib=weights / 2 ** 20,
               batch_fits_80gb=int((80e9 - weights) // per_image), switches=len(s.method.switches))
    # Twice the saved activations leaves room for the backward pass; a step that cannot fit is not tried.
    memory = (torch.cuda.mem_get_info(device)[1] if device.type == 'cuda'
              else os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'))
    if weights + 2 * per_image * p['batch'] < memory:
        x, y = batch(p['batch'], device)
        reset_peak(device)
        step = search_step_rate(s, device, x, y, cfg)
        row.update(step_s=step, images_per_s=p['batch'] / step, peak_mib=utils.peak_memory_mib(device),
                   fisher_s=timed(lambda: switch_curvature(s.model, [(x, y)], 'fisher'), device, 1, cfg['repeats']))
    rows = [row]
    show_proxyless(row)
    del s
    trees = [[proxyless.from_short(h) for h in b] for b in proxyless.PROXYLESSNAS_G[:3 * p['N']]]
    torch.manual_seed(0)
    net = ProxylessNetwork(proxyless.network_config(p['C'], p['alpha'], p['N'], trees)).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    x, y = batch(p['eval_batch'], device)

    def train_step():
        loss = F.cross_entropy(net(x)[0], y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.train()
    reset_peak(device)
    sec = timed(train_step, device, cfg['warmup'], cfg['repeats'])
    rows.append(dict(kind='ProxylessNAS-G ops, retraining', params_M=utils.count_params(net) / 1e6,
                     macs_M=utils.count_macs(net, (3, 32, 32)) / 1e6, batch_size=p['eval_batch'],
                     step_s=sec, images_per_s=p['eval_batch'] / sec, peak_mib=utils.peak_memory_mib(device)))
    show_proxyless(rows[-1])
    return rows


# ----------------------------------------------------------------------------------------------------
# Projection and report
# ----------------------------------------------------------------------------------------------------

def compilation(row):
    """The one-off compilation time of a compiled variant's row (its first step less a step)."""
    if 'compile' not in row['variant'] and 'graphs' not in row['variant']:
        return 0.0
    return max(row['first_step_s'] - row['batch_size'] / row['images_per_s'], 0.0)


def project(report, cfg):
    """Wall time of a full CIFAR-10 search (default protocol: warm-up epoch on 10 %, switch epoch on
    the other 90 %, Fisher curvature on 20 batches) and of DARTS's 600-epoch retraining."""
    out = {}
    rows = [r for r in report['search_step'] if r['batch_size'] == cfg['search_batch']]
    if rows and report['curvature']:
        best = max(rows, key=lambda r: r['images_per_s'])
        c = report['curvature']
        train = 1.1 * CIFAR_TRAIN / best['images_per_s'] + compilation(best)      # the warm-up epoch covers 10 %
        curvature = 20 * c['fisher']['seconds']             # search.py's default estimator
        out['search_minutes'] = (train + curvature) / 60
        out['search_variant'] = f"{best['variant']}, batch {best['batch_size']}"
    for arch in ('DARTS_V2', 'BayesNAS'):
        rates = [r for r in report['eval_train'] if r['arch'] == arch]
        if rates:
            best = max(rates, key=lambda r: r['images_per_s'])
            out[f'retrain_600_epochs_hours_{arch}'] = (600 * CIFAR_TRAIN / best['images_per_s'] + compilation(best)) / 3600
            out[f'retrain_variant_{arch}'] = best['variant']
    if report['proxyless'] and 'step_s' in report['proxyless'][0]:
        supernet, retrain = report['proxyless']
        # Warm-up on 10 % and the switch epoch on 90 % of the training set, then 20 Fisher batches.
        out['proxyless_search_minutes'] = (CIFAR_TRAIN / supernet['images_per_s'] + 20 * supernet['fisher_s']) / 60
        out['proxyless_retrain_300_epochs_hours'] = 300 * CIFAR_TRAIN / retrain['images_per_s'] / 3600
    return out


# Each row is printed as soon as it is measured, so a run cut short still shows what it measured.

def say(line=''):
    print(line, flush=True)


def show_search_step(r):
    say(f"  batch {r['batch_size']:>4}  {r['variant']:<28} {r['images_per_s']:>9.1f} img/s {r['step_s'] * 1e3:>9.1f} "
        f"ms/step  peak {r['peak_mib']:>7.0f} MiB  first step {r['first_step_s']:.1f} s")


def show_curvature(c):
    images = c['images'] + (f" (training accuracy {c['warmup_train_acc']:.1f} %)" if 'warmup_train_acc' in c else '')
    say(f"  {c['switches']} switches, batch {c['batch_size']}, {images}; training step {c['train_step_s'] * 1e3:.1f} ms")
    for m in METHODS:
        say(f"  {m:<10} {c[m]['seconds'] * 1e3:9.1f} ms  {c[m]['ratio_to_train_step']:6.2f} x a training step")
    say('  Spearman rank correlation with ggn: ' + ', '.join(f'{k} {v:.3f}' for k, v in c['spearman_vs_ggn'].items()))
    say('  median ratio to ggn: ' + ', '.join(f'{k} {v:.3g}' for k, v in c['median_ratio_to_ggn'].items()))
    say(f"  HARD update + pruning {c['update_prune_s'] * 1e3:.1f} ms; derivation {c['derive_s'] * 1e3:.1f} ms")


def show_pruned(r):
    say(f"  {r['pruned_share'] * 100:3.0f} % of ops pruned  {r['step_s'] * 1e3:8.1f} ms  {r['images_per_s']:8.1f} img/s")


def show_eval(r):
    say(f"  {r['arch']:<9} {r['variant']:<28} {r['params_M']:.3f}M params  {r['images_per_s']:8.1f} img/s  "
        f"peak {r['peak_mib']:.0f} MiB  first step {r['first_step_s']:.1f} s")


def show_proxyless(r):
    if r['kind'] == 'supernet' and 'step_s' not in r:
        say(f"  supernet ({r['size']}, {r['switches']} switches), batch {r['batch_size']}: does not fit this "
            f"device's memory; not measured")
    elif r['kind'] == 'supernet':
        say(f"  supernet ({r['size']}, {r['switches']} switches), batch {r['batch_size']}: "
            f"{r['step_s'] * 1e3:.1f} ms/step, {r['images_per_s']:.1f} img/s, peak {r['peak_mib']:.0f} MiB; "
            f"Fisher {r['fisher_s'] * 1e3:.1f} ms/batch")
        say(f"  saved activations {r['saved_mib_per_image']:.1f} MiB per image, weights with gradients and "
            f"momentum {r['weights_mib']:.0f} MiB: a batch of about {r['batch_fits_80gb']} fits in 80 GB")
    else:
        say(f"  {r['kind']}: {r['params_M']:.3f}M params, {r['macs_M']:.1f}M multiply-adds, batch "
            f"{r['batch_size']}: {r['images_per_s']:.1f} img/s, peak {r['peak_mib']:.0f} MiB")


def show_projection(p):
    if 'search_minutes' in p:
        say(f"projected full CIFAR-10 search: {p['search_minutes']:.1f} min ({p['search_variant']})")
    for arch in ('DARTS_V2', 'BayesNAS'):
        if f'retrain_600_epochs_hours_{arch}' in p:
            say(f"projected 600-epoch retraining of {arch}: {p[f'retrain_600_epochs_hours_{arch}']:.1f} h "
                f"({p[f'retrain_variant_{arch}']})")
    if 'proxyless_search_minutes' in p:
        say(f"projected proxyless search: {p['proxyless_search_minutes']:.1f} min; 300-epoch retraining of "
            f"ProxylessNAS-G: {p['proxyless_retrain_300_epochs_hours']:.1f} h")


# ----------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------

FULL = dict(C=16, layers=8, batch_sizes=[64, 128, 256], search_batch=64, warmup=3, repeats=7,
            fisher_draws=16, eval_C=36, eval_layers=20, eval_batch=96,
            proxyless=dict(C=16, alpha=84, N=18, batch=32, eval_batch=64))
QUICK = dict(C=4, layers=3, batch_sizes=[8], search_batch=8, warmup=1, repeats=2, fisher_draws=4,
             eval_C=4, eval_layers=3, eval_batch=8, proxyless=dict(C=4, alpha=4, N=1, batch=8, eval_batch=8))
SECTIONS = ('search_step', 'curvature', 'pruned', 'eval_train', 'proxyless')


def main(argv=None):
    parser = utils.Parser('bench.py', description='Benchmarks of the search and retraining steps.')
    parser.add_argument('--quick', action='store_true', help='small CPU smoke run at toy sizes')
    parser.add_argument('--gpu', type=int, default=None, help='CUDA device index (default: cuda:0 if present)')
    parser.add_argument('--compile', action='store_true', help='also measure torch.compile variants')
    parser.add_argument('--only', nargs='+', choices=SECTIONS, default=list(SECTIONS),
                        help='measure only these sections')
    parser.add_argument('--batch_sizes', type=int, nargs='+', default=None,
                        help='supernet batch sizes of section 1 (default: 64 128 256; --quick: 8)')
    parser.add_argument('--data', default=None, help='CIFAR-10 folder: measure the curvature rows on a '
                        'supernet warmed up on real images, as search.py does (default: noise images)')
    parser.add_argument('--out', default='bench.json', help='JSON report path (default: bench.json)')
    args = parser.parse_args(argv)
    utils.check([
        (not (args.quick and args.gpu is not None), '--quick runs on the CPU; leave out --gpu'),
        (all(b >= 2 for b in args.batch_sizes or []), f'--batch_sizes must be at least 2, got {args.batch_sizes}'),
    ])
    device = torch.device('cpu') if args.quick else utils.get_device(args.gpu)
    cfg = dict(QUICK if args.quick else FULL)
    if args.batch_sizes:
        cfg['batch_sizes'] = args.batch_sizes
    if device.type == 'cuda':
        name = torch.cuda.get_device_name(device)
    else:
        name = f'CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)'
    report = dict(device=name, torch=torch.__version__, quick=args.quick, config=cfg,
                  search_step=[], curvature=None, pruned=[], eval_train=[], proxyless=[], projection={})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    say(f"device: {name}, torch {torch.__version__}")
    t0 = time.perf_counter()
    sections = [('search_step', 'supernet training step, as search.py takes it',
                 lambda: bench_search_step(cfg, device, args.compile)),
                ('curvature', 'curvature per batch, against a training step on the same batch',
                 lambda: bench_curvature(cfg, device, args.data)),
                ('pruned', 'supernet step with pruned operations', lambda: bench_pruned(cfg, device)),
                ('eval_train', 'evaluation network training step (retraining configuration)',
                 lambda: bench_eval_networks(cfg, device, args.compile)),
                ('proxyless', 'the proxyless space: supernet step, memory, curvature; ProxylessNAS-G retraining',
                 lambda: bench_proxyless(cfg, device))]
    for key, title, measure in sections:
        if key not in args.only:
            continue
        say(f'\n{title}')
        report[key] = measure()
        if key == 'curvature':
            show_curvature(report[key])
        report['seconds'] = time.perf_counter() - t0
        utils.write_text_atomic(out, json.dumps(report, indent=2) + '\n')      # what is measured is kept
    if report['curvature'] or report['proxyless']:
        report['projection'] = project(report, cfg)
        say()
        if args.quick:      # the toy network's rates: it checks the arithmetic, it predicts nothing
            say('projection from the --quick sizes (toy networks), not from the default ones:')
        show_projection(report['projection'])
    utils.write_text_atomic(out, json.dumps(report, indent=2) + '\n')
    say(f'\nwrote {args.out} ({report["seconds"]:.0f} s)')
    return report


if __name__ == '__main__':
    utils.cli(main)
