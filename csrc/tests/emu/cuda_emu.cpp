// The harness's runtime: workers, fibers, barriers, warp exchanges, the runtime API.
//
// A launch deals its blocks round-robin to kWorkers host threads. A worker runs
// one block at a time: its CUDA threads are fibers on the worker's thread, each
// run until it waits (a barrier, a warp exchange) or returns; the worker's own
// context is the scheduler. Every switch is told to the sanitizers: with
// ThreadSanitizer each fiber is a thread of its own, switches carry no
// happens-before, and the only edges are the ones CUDA gives: __syncthreads,
// __syncwarp, the start and end of the grid. So TSan reports unsynchronised
// shared or global accesses between the threads of a block, and between blocks
// run by different workers. Between two blocks of one worker there is an edge
// (the worker reuses the block's state), so races between blocks i and j are
// seen when i and j differ modulo kWorkers.
//
// The harness's own state is touched by many fibers, hence relaxed atomics:
// the fibers of one block never run at the same time, so atomics are only for
// the race detector's sake.
#include "cuda_emu.h"

#include <pthread.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdarg>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#define EMU_TSAN 1
#endif
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#endif
#if !defined(__x86_64__)
#include <ucontext.h>
#endif

dim3 blockDim;
dim3 gridDim;

#if defined(__x86_64__)
// switch_stack(save, to): saves the callee-saved registers and the FP control
// words on the current stack, stores its pointer in *save, continues on `to`.
// glibc's swapcontext would make a signal-mask syscall per switch.
extern "C" void emu_switch_stack(void** save, void* to);
asm(R"(
.text
.globl emu_switch_stack
.type emu_switch_stack,@function
emu_switch_stack:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size emu_switch_stack, .-emu_switch_stack
.section .note.GNU-stack,"",@progbits
.text
)");
#endif

namespace emu {

namespace {

constexpr unsigned kWorkers = 4;
constexpr size_t kStackBytes = 1 << 20;  // per fiber; mmap'd, so only touched pages count
constexpr size_t kStaticSmem = 48 * 1024;  // static __shared__ per block, as on the device
constexpr int kMaxStatics = 64;

enum State : int { kIdle, kRunnable, kAtBarrier, kAtWarp, kAtGroup, kAtAlloc, kAtMbarrier, kDone };

template <typename T>
T ld(const std::atomic<T>& a) { return a.load(std::memory_order_relaxed); }
template <typename T, typename U>
void st(std::atomic<T>& a, U v) { a.store(T(v), std::memory_order_relaxed); }

#if EMU_TSAN
inline void hb_release(void* p) { __tsan_release(p); }
inline void hb_acquire(void* p) { __tsan_acquire(p); }
#else
inline void hb_release(void*) {}
inline void hb_acquire(void*) {}
#endif

// A saved execution context.
struct Context {
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
};

struct Fiber {
  unsigned tid = 0;
  uint3 idx{};
  std::atomic<int> state{kIdle};
  std::atomic<uint64_t> result{0};  // of the fiber's last warp exchange
  unsigned char* stack = nullptr;   // [stack, stack + kStackBytes), a guard page below
  Context ctx;
  void* tsan = nullptr;
  // cp.async copies issued and not yet completed (group 0: not committed).
  struct Copy {
    unsigned char* dst;
    int bytes;
    uint64_t group;
    unsigned char data[16];
  };
  std::vector<Copy> copies;
  uint64_t groups = 0;  // commit groups closed so far
  // wgmma ops issued and not yet completed (group 0: not committed).
  struct Mma {
    float* d;
    int n;
    bool bf16, a_in_regs, b_mn_major, accumulate;
    float a[2][16];  // A from registers: this thread's two rows
    uint64_t a_desc, b_desc, group;
  };
  std::vector<Mma> mmas;
  uint64_t mma_groups = 0;
  std::atomic<uint64_t*> mbar{nullptr};  // the mbarrier a kAtMbarrier fiber waits on
  std::atomic<unsigned> mbar_parity{0};
};

struct Warp {
  uint32_t members = 0;  // lanes the block has
  std::atomic<uint32_t> arrived{0}, exited{0}, mask{0};
  std::atomic<int> op{0};
  std::atomic<uint64_t> gen{0};
  std::atomic<uint64_t> vals[32];
  std::atomic<unsigned> src[32];
  // warp_gather's registers, one buffer per generation parity: a lane reads
  // generation g's right after it, before it can reach generation g + 1, and
  // g + 2 (the next writer of the buffer) needs every lane past g + 1.
  std::atomic<uint32_t> regs[2][32][kMaxGatherWords];
  char sync[2];  // __syncwarp's happens-before, one per generation parity
};

// A warpgroup's exchange (wgmma): 128 threads, four whole warps.
constexpr int kGroupWords = 10;
struct WarpGroup {
  std::atomic<int> arrived{0};
  std::atomic<uint64_t> gen{0};
  std::atomic<uint32_t> regs[2][128][kGroupWords];  // per generation parity, as Warp::regs
};

struct Static {
  std::atomic<const void*> key{nullptr};
  std::atomic<void*> mem{nullptr};
  std::atomic<size_t> bytes{0};
};

struct Launch {
  Config cfg;
  void (*body)(void*);
  void* ctx;
  unsigned threads, workers;
  uint64_t blocks;
};

struct Worker {
  // The pool's handshake (mutex: host <-> worker happens-before).
  std::mutex m;
  std::condition_variable cv;
  uint64_t posted = 0, finished = 0;
  const Launch* launch = nullptr;
  unsigned index = 0;

  // The running launch and block; written by the scheduler before block_start.
  const Launch* run = nullptr;
  std::vector<std::unique_ptr<Fiber>> fibers;  // grows between launches only
  std::unique_ptr<Warp[]> warps;
  std::unique_ptr<WarpGroup[]> groups;  // threads / 128 of them
  uint3 block{};
  unsigned char* dyn = nullptr;
  size_t dyn_bytes = 0;

  std::atomic<Fiber*> current{nullptr};
  std::atomic<int> active{0}, arrived{0};
  std::atomic<uint64_t> bar_gen{0};
  char bar_sync[2];  // __syncthreads' happens-before, one per generation parity
  char block_start, block_end, statics_sync;

  Static statics[kMaxStatics];
  std::atomic<int> n_statics{0};
  size_t static_bytes = 0;  // scheduler only
  std::atomic<const void*> alloc_key{nullptr};
  std::atomic<size_t> alloc_bytes{0}, alloc_align{0};

  // The scheduler's context.
  Context sched;
  void* sched_tsan = nullptr;
  void* sched_stack = nullptr;
  size_t sched_stack_size = 0;
};

thread_local Worker* t_worker = nullptr;

std::mutex g_mutex;  // the error state and function attributes
cudaError_t g_error = cudaSuccess;
std::map<const void*, size_t>& smem_limits() {
  static std::map<const void*, size_t> m;
  return m;
}

Fiber& self() { return *ld(t_worker->current); }

[[noreturn]] void fiber_main();

// ---------------------------------------------------------------- switching
// From the running context to `to`, whose stack is [stack, stack + size) and
// whose ThreadSanitizer fiber is `tsan_to`; returns when switched back.
void transfer(Context& from, Context& to, void* tsan_to, void* stack, size_t size) {
#if EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, stack, size);
#else
  (void)stack;
  (void)size;
#endif
#if EMU_TSAN
  __tsan_switch_to_fiber(tsan_to, __tsan_switch_to_fiber_no_sync);
#else
  (void)tsan_to;
#endif
#if defined(__x86_64__)
  emu_switch_stack(&from.sp, to.sp);
#else
  swapcontext(&from.uc, &to.uc);
#endif
#if EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

void enter(Worker& w, Fiber& f) {
  st(w.current, &f);
  transfer(w.sched, f.ctx, f.tsan, f.stack, kStackBytes);
}

// Back to the scheduler; returns when the scheduler runs this fiber again.
void yield(Worker& w, Fiber& f) { transfer(f.ctx, w.sched, w.sched_tsan, w.sched_stack, w.sched_stack_size); }

#if !defined(__x86_64__)
void fiber_trampoline() { fiber_main(); }
#endif

std::unique_ptr<Fiber> make_fiber(unsigned tid) {
  auto f = std::make_unique<Fiber>();
  f->tid = tid;
  const size_t page = 4096;
  void* m = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  if (m == MAP_FAILED) fail("cannot map a fiber stack");
  mprotect(m, page, PROT_NONE);  // a stack overflow faults instead of corrupting a neighbour
  f->stack = static_cast<unsigned char*>(m) + page;
#if defined(__x86_64__)
  // What emu_switch_stack pops: FP control words, r15..r12, rbx, rbp, then
  // fiber_main as the return address, with a zero return address above it.
  auto* top = reinterpret_cast<uint64_t*>(f->stack + kStackBytes);
  uint64_t* sp = top - 9;  // 16-byte alignment at fiber_main's entry, as the ABI wants
  sp[0] = 0x1F80ull | (0x037Full << 32);
  for (int i = 1; i <= 6; ++i) sp[i] = 0;
  sp[7] = reinterpret_cast<uint64_t>(&fiber_main);
  sp[8] = 0;
  f->ctx.sp = sp;
#else
  getcontext(&f->ctx.uc);
  f->ctx.uc.uc_stack.ss_sp = f->stack;
  f->ctx.uc.uc_stack.ss_size = kStackBytes;
  f->ctx.uc.uc_link = nullptr;
  makecontext(&f->ctx.uc, fiber_trampoline, 0);
#endif
#if EMU_TSAN
  f->tsan = __tsan_create_fiber(0);
#endif
  return f;
}

// ---------------------------------------------------------------- the block
void wake(Worker& w, int from_state) {
  for (unsigned t = 0; t < w.run->threads; ++t) {
    Fiber& f = *w.fibers[t];
    if (ld(f.state) == from_state) st(f.state, kRunnable);
  }
}

void complete_barrier(Worker& w) {
  st(w.arrived, 0);
  st(w.bar_gen, ld(w.bar_gen) + 1);
  wake(w, kAtBarrier);
}

void thread_exit(Worker& w, Fiber& f) {
  Warp& wp = w.warps[f.tid / 32];
  const uint32_t bit = 1u << (f.tid % 32);
  if (!f.copies.empty()) fail("returned with %zu cp.async copies not waited for", f.copies.size());
  if (!f.mmas.empty()) fail("returned with %zu wgmma ops not waited for", f.mmas.size());
  if (w.groups && f.tid / 128 < w.run->threads / 128 && ld(w.groups[f.tid / 128].arrived) > 0)
    fail("returned while %d threads of its warpgroup wait for it in a wgmma", ld(w.groups[f.tid / 128].arrived));
  st(wp.exited, ld(wp.exited) | bit);
  if (ld(wp.arrived) != 0u && (ld(wp.mask) & bit) != 0u)
    fail("returned while lanes 0x%08x wait for it in a warp intrinsic with mask 0x%08x", ld(wp.arrived),
         ld(wp.mask));
  st(w.active, ld(w.active) - 1);
  if (ld(w.arrived) > 0 && ld(w.arrived) == ld(w.active)) complete_barrier(w);
}

[[noreturn]] void fiber_main() {
  Worker& w = *t_worker;
  Fiber& f = *ld(w.current);
#if EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
  for (;;) {
    hb_acquire(&w.block_start);
    w.run->body(w.run->ctx);
    thread_exit(w, f);
    hb_release(&w.block_end);
    st(f.state, kDone);
    yield(w, f);
  }
}

const char* op_name(int op) {
  switch (WarpOp(op)) {
    case WarpOp::kSync: return "__syncwarp";
    case WarpOp::kShuffle: return "a shuffle";
    case WarpOp::kBallot: return "a ballot";
    case WarpOp::kGather: return "an mma.sync / ldmatrix";
  }
  return "?";
}

[[noreturn]] void deadlock(Worker& w) {
  std::fprintf(stderr, "\n[cuda emulator] deadlock in block (%u,%u,%u): every live thread waits\n", w.block.x,
               w.block.y, w.block.z);
  for (unsigned i = 0; i * 32 < w.run->threads; ++i) {
    const Warp& wp = w.warps[i];
    if (ld(wp.arrived) != 0u)
      std::fprintf(stderr, "  warp %u: lanes 0x%08x wait in %s with mask 0x%08x; lanes 0x%08x never arrive%s\n", i,
                   ld(wp.arrived), op_name(ld(wp.op)), ld(wp.mask), ld(wp.mask) & ~ld(wp.arrived),
                   (ld(wp.mask) & ~ld(wp.arrived) & ~ld(wp.exited)) ? " (they wait elsewhere)" : "");
  }
  for (unsigned i = 0; w.groups && i < w.run->threads / 128; ++i)
    if (ld(w.groups[i].arrived) > 0)
      std::fprintf(stderr, "  warpgroup %u: %d of 128 threads wait in a wgmma or setmaxnreg\n", i,
                   ld(w.groups[i].arrived));
  for (unsigned t = 0; t < w.run->threads; ++t) {
    const Fiber& f = *w.fibers[t];
    if (ld(f.state) == kAtMbarrier)
      std::fprintf(stderr, "  thread %u waits on the mbarrier at %p for phase parity %u\n", t,
                   static_cast<void*>(ld(f.mbar)), ld(f.mbar_parity));
  }
  if (ld(w.arrived) > 0)
    std::fprintf(stderr, "  __syncthreads: %d of %d live threads arrived (a barrier some threads never reach)\n",
                 ld(w.arrived), ld(w.active));
  std::fflush(stderr);
  std::abort();
}

// The scheduler asked for a static __shared__ allocation (a fiber waits in kAtAlloc).
void serve_alloc(Worker& w, Fiber& f) {
  const size_t bytes = ld(w.alloc_bytes), align = std::max<size_t>(ld(w.alloc_align), 16);
  const int n = ld(w.n_statics);
  w.static_bytes += bytes;
  if (n == kMaxStatics || w.static_bytes > kStaticSmem) {
    st(w.current, &f);
    fail("static __shared__ memory over the device's %zu B per block (%zu B requested)", kStaticSmem, w.static_bytes);
  }
  void* mem = nullptr;
  if (posix_memalign(&mem, align, bytes ? bytes : 1) != 0) fail("out of host memory for static shared memory");
  std::memset(mem, 0xff, bytes);  // garbage on the device: NaN bytes here
  st(w.statics[n].key, ld(w.alloc_key));
  st(w.statics[n].mem, mem);
  st(w.statics[n].bytes, bytes);
  st(w.n_statics, n + 1);
  hb_release(&w.statics_sync);
  st(f.state, kRunnable);
}

void run_block(Worker& w) {
  const unsigned threads = w.run->threads;
  if (w.dyn_bytes) std::memset(w.dyn, 0xff, w.dyn_bytes);
  st(w.active, int(threads));
  st(w.arrived, 0);
  for (unsigned i = 0; i * 32 < threads; ++i) {
    st(w.warps[i].arrived, 0u);
    st(w.warps[i].exited, 0u);
  }
  for (unsigned i = 0; i < threads / 128; ++i) st(w.groups[i].arrived, 0);
  for (unsigned t = 0; t < threads; ++t) st(w.fibers[t]->state, kRunnable);
  hb_release(&w.block_start);
  for (;;) {
    bool ran = false, live = false;
    for (unsigned t = 0; t < threads; ++t) {
      Fiber& f = *w.fibers[t];
      if (ld(f.state) == kRunnable) {
        enter(w, f);
        ran = true;
        if (ld(f.state) == kAtAlloc) serve_alloc(w, f);
      }
      live |= ld(f.state) != kDone;
    }
    if (!live) break;
    if (!ran) deadlock(w);
  }
  hb_acquire(&w.block_end);
  for (int i = 0; i < ld(w.n_statics); ++i) std::free(ld(w.statics[i].mem));
  st(w.n_statics, 0);
  w.static_bytes = 0;
}

void run_launch(Worker& w, const Launch& L) {
  w.run = &L;
  const Config& c = L.cfg;
  while (w.fibers.size() < L.threads) w.fibers.push_back(make_fiber(unsigned(w.fibers.size())));
  for (unsigned t = 0; t < L.threads; ++t)
    w.fibers[t]->idx = uint3{t % c.block.x, (t / c.block.x) % c.block.y, t / (c.block.x * c.block.y)};
  const unsigned nwarps = (L.threads + 31) / 32;
  w.warps.reset(new Warp[nwarps]);
  for (unsigned i = 0; i < nwarps; ++i) {
    const unsigned lanes = std::min(32u, L.threads - 32 * i);
    w.warps[i].members = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
  }
  w.groups.reset(L.threads >= 128 ? new WarpGroup[L.threads / 128] : nullptr);
  // Exactly the launch's bytes, so AddressSanitizer sees a read past the end.
  w.dyn_bytes = c.smem;
  w.dyn = nullptr;
  if (c.smem && posix_memalign(reinterpret_cast<void**>(&w.dyn), 128, c.smem) != 0)
    fail("out of host memory for %zu B of dynamic shared memory", c.smem);
  for (uint64_t b = w.index; b < L.blocks; b += L.workers) {
    w.block = uint3{unsigned(b % c.grid.x), unsigned((b / c.grid.x) % c.grid.y),
                    unsigned(b / (uint64_t(c.grid.x) * c.grid.y))};
    run_block(w);
  }
  std::free(w.dyn);
  w.dyn = nullptr;
  w.dyn_bytes = 0;
  w.warps.reset();
  w.groups.reset();
  w.run = nullptr;
}

void worker_loop(Worker* w) {
  t_worker = w;
#if EMU_TSAN
  w->sched_tsan = __tsan_get_current_fiber();
#endif
  pthread_attr_t attr;
  if (pthread_getattr_np(pthread_self(), &attr) == 0) {
    pthread_attr_getstack(&attr, &w->sched_stack, &w->sched_stack_size);
    pthread_attr_destroy(&attr);
  }
  uint64_t seen = 0;
  for (;;) {
    const Launch* L;
    {
      std::unique_lock<std::mutex> l(w->m);
      w->cv.wait(l, [&] { return w->posted != seen; });
      seen = w->posted;
      L = w->launch;
    }
    run_launch(*w, *L);
    {
      std::lock_guard<std::mutex> l(w->m);
      w->finished = seen;
    }
    w->cv.notify_all();
  }
}

// The workers live as long as the process (detached; a blocked worker holds nothing).
Worker* pool() {
  static Worker* workers = [] {
    auto* ws = new Worker[kWorkers];
    for (unsigned i = 0; i < kWorkers; ++i) {
      ws[i].index = i;
      std::thread(worker_loop, &ws[i]).detach();
    }
    return ws;
  }();
  return workers;
}

}  // namespace

void fail(const char* fmt, ...) {
  std::va_list ap;
  va_start(ap, fmt);
  if (t_worker != nullptr && ld(t_worker->current) != nullptr) {
    const Worker& w = *t_worker;
    const uint3 t = ld(w.current)->idx;
    std::fprintf(stderr, "\n[cuda emulator] error in block (%u,%u,%u) thread (%u,%u,%u): ", w.block.x, w.block.y,
                 w.block.z, t.x, t.y, t.z);
  } else {
    std::fprintf(stderr, "\n[cuda emulator] error: ");
  }
  std::vfprintf(stderr, fmt, ap);
  std::fprintf(stderr, "\n");
  va_end(ap);
  std::fflush(stderr);
  std::abort();
}

void set_error(cudaError_t e) {
  std::lock_guard<std::mutex> l(g_mutex);
  if (g_error == cudaSuccess) g_error = e;
}
cudaError_t take_error() {
  std::lock_guard<std::mutex> l(g_mutex);
  const cudaError_t e = g_error;
  g_error = cudaSuccess;
  return e;
}
size_t smem_limit(const void* func) {
  std::lock_guard<std::mutex> l(g_mutex);
  auto it = smem_limits().find(func);
  return it == smem_limits().end() ? kDefaultDynamicSmem : it->second;
}
void set_smem_limit(const void* func, size_t bytes) {
  std::lock_guard<std::mutex> l(g_mutex);
  smem_limits()[func] = bytes;
}

uint3 thread_idx() {
  if (t_worker == nullptr || ld(t_worker->current) == nullptr) fail("threadIdx read outside a kernel");
  return self().idx;
}
uint3 block_idx() {
  if (t_worker == nullptr || ld(t_worker->current) == nullptr) fail("blockIdx read outside a kernel");
  return t_worker->block;
}
unsigned lane() { return self().tid % 32; }
unsigned char* dynamic_shared() { return t_worker->dyn; }

void* static_shared_bytes(const void* key, size_t bytes, size_t align) {
  Worker& w = *t_worker;
  for (int pass = 0; pass < 2; ++pass) {
    for (int i = 0; i < ld(w.n_statics); ++i)
      if (ld(w.statics[i].key) == key) {
        hb_acquire(&w.statics_sync);
        return ld(w.statics[i].mem);
      }
    // First thread of the block here: the scheduler allocates (and poisons) it,
    // so the allocation orders no memory between the block's threads.
    st(w.alloc_key, key);
    st(w.alloc_bytes, bytes);
    st(w.alloc_align, align);
    Fiber& f = self();
    st(f.state, kAtAlloc);
    yield(w, f);
  }
  fail("static __shared__ allocation lost");
}

void syncthreads() {
  Worker& w = *t_worker;
  Fiber& f = self();
  char* sync = &w.bar_sync[ld(w.bar_gen) & 1];
  hb_release(sync);
  st(w.arrived, ld(w.arrived) + 1);
  if (ld(w.arrived) == ld(w.active)) {
    complete_barrier(w);
  } else {
    st(f.state, kAtBarrier);
    yield(w, f);
  }
  hb_acquire(sync);
}

uint64_t warp_exchange(WarpOp op, uint32_t mask, uint64_t bits, unsigned src) {
  Worker& w = *t_worker;
  Fiber& f = self();
  const unsigned lane = f.tid % 32;
  Warp& wp = w.warps[f.tid / 32];
  if (!((mask >> lane) & 1u)) fail("%s: calling lane %u is not in its mask 0x%08x", op_name(int(op)), lane, mask);
  if ((mask & ~wp.members) != 0u)
    fail("%s: mask 0x%08x names lanes the block does not have (lanes 0x%08x)", op_name(int(op)), mask, wp.members);
  if ((mask & ld(wp.exited)) != 0u)
    fail("%s: lanes 0x%08x named in mask 0x%08x have returned", op_name(int(op)), mask & ld(wp.exited), mask);
  if (op == WarpOp::kShuffle && !((mask >> src) & 1u))
    fail("shuffle: source lane %u is not in mask 0x%08x", src, mask);
  uint32_t arrived = ld(wp.arrived);
  if (arrived != 0u && (ld(wp.mask) != mask || ld(wp.op) != int(op)))
    fail("%s with mask 0x%08x while lanes 0x%08x wait in %s with mask 0x%08x", op_name(int(op)), mask, arrived,
         op_name(ld(wp.op)), ld(wp.mask));
  st(wp.vals[lane], bits);
  st(wp.src[lane], src);
  st(wp.mask, mask);
  st(wp.op, int(op));
  char* sync = &wp.sync[ld(wp.gen) & 1];
  if (op == WarpOp::kSync) hb_release(sync);
  arrived |= 1u << lane;
  if (arrived == mask) {
    uint64_t ballot = 0;
    for (unsigned l = 0; l < 32; ++l)
      if (((mask >> l) & 1u) && ld(wp.vals[l]) != 0u) ballot |= 1ull << l;
    const unsigned base = f.tid / 32 * 32;
    for (unsigned l = 0; l < 32; ++l) {
      if (!((mask >> l) & 1u)) continue;
      Fiber& g = *w.fibers[base + l];
      st(g.result, op == WarpOp::kBallot ? ballot : ld(wp.vals[ld(wp.src[l])]));
      if (l != lane) st(g.state, kRunnable);
    }
    st(wp.arrived, 0u);
    st(wp.gen, ld(wp.gen) + 1);
  } else {
    st(wp.arrived, arrived);
    st(f.state, kAtWarp);
    yield(w, f);
  }
  if (op == WarpOp::kSync) hb_acquire(sync);
  return ld(f.result);
}

void warp_gather(const uint32_t* mine, int n, uint32_t* all) {
  if (n < 1 || n > kMaxGatherWords) fail("warp_gather of %d words", n);
  Worker& w = *t_worker;
  Fiber& f = self();
  Warp& wp = w.warps[f.tid / 32];
  const unsigned lane = f.tid % 32;
  const unsigned par = unsigned(ld(wp.gen) & 1);
  for (int i = 0; i < n; ++i) st(wp.regs[par][lane][i], mine[i]);
  warp_exchange(WarpOp::kGather, 0xffffffffu, 0, 0);
  for (unsigned l = 0; l < 32; ++l)
    for (int i = 0; i < n; ++i) all[l * unsigned(n) + unsigned(i)] = ld(wp.regs[par][l][i]);
}

bool in_shared(const void* p, size_t bytes) {
  const Worker& w = *t_worker;
  const auto* b = static_cast<const unsigned char*>(p);
  if (w.dyn != nullptr && b >= w.dyn && b + bytes <= w.dyn + w.dyn_bytes) return true;
  for (int i = 0; i < ld(w.n_statics); ++i) {
    const auto* m = static_cast<const unsigned char*>(ld(w.statics[i].mem));
    if (b >= m && b + bytes <= m + ld(w.statics[i].bytes)) return true;
  }
  return false;
}

void cp_async(void* dst, const void* src, int bytes, int src_bytes) {
  if (bytes != 4 && bytes != 8 && bytes != 16) fail("cp.async of %d bytes (4, 8 or 16)", bytes);
  if (src_bytes < 0 || src_bytes > bytes) fail("cp.async src-size %d of a %d-byte copy", src_bytes, bytes);
  if (reinterpret_cast<uintptr_t>(dst) % unsigned(bytes) != 0 || reinterpret_cast<uintptr_t>(src) % unsigned(bytes) != 0)
    fail("cp.async: %d-byte copy %p <- %p is not %d-byte aligned", bytes, dst, src, bytes);
  if (!in_shared(dst, size_t(bytes))) fail("cp.async: destination %p is not in the block's shared memory", dst);
  Fiber::Copy c{static_cast<unsigned char*>(dst), bytes, 0, {}};
  if (src_bytes > 0) std::memcpy(c.data, src, size_t(src_bytes));
  self().copies.push_back(c);
}

void cp_async_commit() {
  Fiber& f = self();
  ++f.groups;
  for (auto& c : f.copies)
    if (c.group == 0) c.group = f.groups;
}

// Completes, in issue order, the ops of `ops` whose commit group is at least
// `pending` groups old (of `groups` closed); ops not yet committed stay.
template <typename Op, typename F>
void complete_groups(std::vector<Op>& ops, uint64_t groups, int pending, const char* what, F&& complete) {
  if (pending < 0) fail("%s.wait_group %d", what, pending);
  const uint64_t done = groups > uint64_t(pending) ? groups - uint64_t(pending) : 0;
  size_t kept = 0;
  for (size_t i = 0; i < ops.size(); ++i) {
    if (ops[i].group != 0 && ops[i].group <= done) {
      complete(ops[i]);
    } else {
      ops[kept++] = ops[i];
    }
  }
  ops.resize(kept);
}

void cp_async_wait(int pending) {
  Fiber& f = self();
  complete_groups(f.copies, f.groups, pending, "cp.async",
                  [](const Fiber::Copy& c) { std::memcpy(c.dst, c.data, size_t(c.bytes)); });
}

void ldmatrix(uint32_t* r, int num, bool trans, const void* row_addr) {
  if (num != 1 && num != 2 && num != 4) fail("ldmatrix .x%d", num);
  if (reinterpret_cast<uintptr_t>(row_addr) % 16 != 0) fail("ldmatrix: row address %p is not 16-byte aligned", row_addr);
  if (!in_shared(row_addr, 16)) fail("ldmatrix: row address %p is not in the block's shared memory", row_addr);
  uint32_t mine[2], all[64];
  const uintptr_t a = reinterpret_cast<uintptr_t>(row_addr);
  mine[0] = uint32_t(a);
  mine[1] = uint32_t(uint64_t(a) >> 32);
  warp_gather(mine, 2, all);
  auto row = [&](unsigned l) {
    return reinterpret_cast<const unsigned char*>(uintptr_t(all[2 * l]) | (uintptr_t(all[2 * l + 1]) << 32));
  };
  const unsigned l = lane();
  for (int i = 0; i < num; ++i) {
    uint16_t lo, hi;
    if (!trans) {
      const unsigned char* p = row(unsigned(8 * i) + l / 4) + 4 * (l % 4);
      std::memcpy(&lo, p, 2);
      std::memcpy(&hi, p + 2, 2);
    } else {
      std::memcpy(&lo, row(unsigned(8 * i) + 2 * (l % 4)) + 2 * (l / 4), 2);
      std::memcpy(&hi, row(unsigned(8 * i) + 2 * (l % 4) + 1) + 2 * (l / 4), 2);
    }
    r[i] = uint32_t(lo) | (uint32_t(hi) << 16);
  }
}

// A 16-bit fp16 or bf16 value's float.
static float half_bits(uint16_t bits, bool bf16) {
  if (bf16) {
    __nv_bfloat16 v;
    v.bits = bits;
    return __bfloat162float(v);
  }
  __half v;
  v.bits = bits;
  return __half2float(v);
}

void mma_m16n8k16(float* d, const uint32_t* a, const uint32_t* b, bool bf16) {
  uint32_t mine[6], all[32 * 6];
  std::memcpy(mine, a, 16);
  std::memcpy(mine + 4, b, 8);
  warp_gather(mine, 6, all);
  auto half_of = [&](unsigned l, int reg, int hi) {
    return half_bits(uint16_t(all[l * 6 + unsigned(reg)] >> (16 * hi)), bf16);
  };
  // A (16 x 16, row): element (r, k) is in lane (r % 8) * 4 + (k % 8) / 2,
  // register (r / 8) + 2 (k / 8), half k % 2. B (16 x 8, col): element (k, n)
  // in lane n * 4 + (k % 8) / 2, register 4 + k / 8, half k % 2.
  auto A = [&](int r, int k) { return half_of(unsigned((r % 8) * 4 + (k % 8) / 2), r / 8 + 2 * (k / 8), k % 2); };
  auto B = [&](int k, int n) { return half_of(unsigned(n * 4 + (k % 8) / 2), 4 + k / 8, k % 2); };
  const int g = int(lane()) / 4, t = int(lane()) % 4;
  for (int i = 0; i < 4; ++i) {
    const int r = g + 8 * (i / 2), n = 2 * t + i % 2;
    float acc = d[i];
    for (int k = 0; k < 16; ++k) acc += A(r, k) * B(k, n);
    d[i] = acc;
  }
}

// ---------------------------------------------------------------- wgmma
namespace {

// Every thread of the caller's warpgroup gives n words and gets all 128
// threads' (all[t * n + w], t = thread index in the warpgroup). Synchronises
// the warpgroup's execution, orders no memory. `op` names the instruction.
void warpgroup_gather(const uint32_t* mine, int n, uint32_t* all, const char* op) {
  Worker& w = *t_worker;
  Fiber& f = self();
  if (w.run->threads % 128 != 0)
    fail("%s in a block of %u threads (not whole warpgroups of 128)", op, w.run->threads);
  const unsigned first = f.tid / 128 * 128;
  for (unsigned i = 0; i < 4; ++i)
    if (ld(w.warps[first / 32 + i].exited) != 0u)
      fail("%s: threads of its warpgroup (warp %u, lanes 0x%08x) have returned", op, first / 32 + i,
           ld(w.warps[first / 32 + i].exited));
  WarpGroup& g = w.groups[f.tid / 128];
  const unsigned par = unsigned(ld(g.gen) & 1);
  for (int i = 0; i < n; ++i) st(g.regs[par][f.tid - first][i], mine[i]);
  const int arrived = ld(g.arrived) + 1;
  if (arrived == 128) {
    st(g.arrived, 0);
    st(g.gen, ld(g.gen) + 1);
    for (unsigned t = first; t < first + 128; ++t)
      if (t != f.tid && ld(w.fibers[t]->state) == kAtGroup) st(w.fibers[t]->state, kRunnable);
  } else {
    st(g.arrived, arrived);
    st(f.state, kAtGroup);
    yield(w, f);
  }
  for (unsigned t = 0; t < 128; ++t)
    for (int i = 0; i < n; ++i) all[t * unsigned(n) + unsigned(i)] = ld(g.regs[par][t][i]);
}

struct Desc {
  uint32_t start, lbo, sbo;
};
Desc decode(uint64_t desc, const char* which) {
  if ((desc >> 62) != 0) fail("wgmma: %s descriptor asks for swizzle mode %u (only no-swizzle is emulated)", which,
                              unsigned(desc >> 62));
  if (((desc >> 49) & 7u) != 0) fail("wgmma: %s descriptor has a matrix base offset (not emulated)", which);
  return Desc{uint32_t(desc & 0x3FFFu) << 4, uint32_t((desc >> 16) & 0x3FFFu) << 4,
              uint32_t((desc >> 32) & 0x3FFFu) << 4};
}

// The 16-bit element at shared-window address `addr`, which must lie in the
// block's dynamic shared memory.
float smem_elem(uint32_t addr, bool bf16, const char* which) {
  const Worker& w = *t_worker;
  if (addr < kSharedWindowBase || addr + 2 > kSharedWindowBase + w.dyn_bytes)
    fail("wgmma: %s operand element at shared address %u is outside the block's %zu B of dynamic shared memory",
         which, addr, w.dyn_bytes);
  uint16_t bits;
  std::memcpy(&bits, w.dyn + (addr - kSharedWindowBase), 2);
  return half_bits(bits, bf16);
}

// No-swizzle canonical layouts (PTX ISA, "Shared Memory Matrix Layout"):
// K-major element (row, k) of a 16-k slice at start + (row / 8) sbo +
// (k / 8) lbo + 16 (row % 8) + 2 (k % 8); MN-major element (k, n) at
// start + (n / 8) sbo + (k / 8) lbo + 16 (k % 8) + 2 (n % 8).
uint32_t k_major(const Desc& d, int row, int k) {
  return d.start + uint32_t(row / 8) * d.sbo + uint32_t(k / 8) * d.lbo + 16u * uint32_t(row % 8) + 2u * uint32_t(k % 8);
}
uint32_t mn_major(const Desc& d, int k, int n) {
  return d.start + uint32_t(n / 8) * d.sbo + uint32_t(k / 8) * d.lbo + 16u * uint32_t(k % 8) + 2u * uint32_t(n % 8);
}

void complete(const Fiber& f, const Fiber::Mma& m) {
  const int wi = int(f.tid % 128) / 32, lane = int(f.tid % 32), g = lane / 4, t = lane % 4;
  const Desc a = m.a_in_regs ? Desc{} : decode(m.a_desc, "A");
  const Desc b = decode(m.b_desc, "B");
  for (int j = 0; j < m.n / 8; ++j)
    for (int i = 0; i < 4; ++i) {
      const int h = i / 2, row = 16 * wi + g + 8 * h, col = 8 * j + 2 * t + i % 2;
      float acc = m.accumulate ? m.d[4 * j + i] : 0.0f;
      for (int k = 0; k < 16; ++k) {
        const float av = m.a_in_regs ? m.a[h][k] : smem_elem(k_major(a, row, k), m.bf16, "A");
        const float bv = smem_elem(m.b_mn_major ? mn_major(b, k, col) : k_major(b, col, k), m.bf16, "B");
        acc += av * bv;
      }
      m.d[4 * j + i] = acc;
    }
}

}  // namespace

uint32_t shared_window_addr(const void* p) {
  const Worker& w = *t_worker;
  const auto* b = static_cast<const unsigned char*>(p);
  if (w.dyn == nullptr || b < w.dyn || b > w.dyn + w.dyn_bytes)
    fail("smem_desc: %p is not in the block's dynamic shared memory", p);
  return kSharedWindowBase + uint32_t(b - w.dyn);
}

void wgmma(float* d, int n, bool bf16, const uint32_t* a_regs, uint64_t a_desc, uint64_t b_desc, bool b_mn_major,
           bool accumulate) {
  if (n < 8 || n > 256 || n % 8 != 0) fail("wgmma m64n%dk16: N must be a multiple of 8 in [8, 256]", n);
  Fiber& f = self();
  uint32_t mine[kGroupWords] = {0, 0, 0, 0,
                                uint32_t(a_desc), uint32_t(a_desc >> 32), uint32_t(b_desc), uint32_t(b_desc >> 32),
                                uint32_t(n), uint32_t(bf16) | uint32_t(a_regs != nullptr) << 1 |
                                                 uint32_t(b_mn_major) << 2 | uint32_t(accumulate) << 3};
  if (a_regs != nullptr) std::memcpy(mine, a_regs, 16);
  uint32_t all[128 * kGroupWords];
  warpgroup_gather(mine, kGroupWords, all, "wgmma");
  for (unsigned u = 0; u < 128; ++u)
    for (int i = 4; i < kGroupWords; ++i)
      if (all[u * kGroupWords + unsigned(i)] != mine[i])
        fail("wgmma: the warpgroup's threads disagree on the shape, descriptors or flags (thread %u of the group)", u);
  Fiber::Mma m{d, n, bf16, a_regs != nullptr, b_mn_major, accumulate, {}, a_desc, b_desc, 0};
  if (a_regs != nullptr) {
    // A (16 x 16 per warp, the mma.sync layout): element (r, k) in lane
    // (r % 8) * 4 + (k % 8) / 2, register r / 8 + 2 (k / 8), half k % 2.
    const unsigned warp_base = f.tid % 128 / 32 * 32, g = f.tid % 32 / 4;
    for (int h = 0; h < 2; ++h)
      for (int k = 0; k < 16; ++k) {
        const unsigned r = g + 8u * unsigned(h);
        const unsigned src = warp_base + (r % 8) * 4 + unsigned(k % 8) / 2;
        const uint32_t word = all[src * kGroupWords + r / 8 + 2 * unsigned(k / 8)];
        m.a[h][k] = half_bits(uint16_t(word >> (16 * (k % 2))), bf16);
      }
  }
  f.mmas.push_back(m);
}

void wgmma_fence() {}

void wgmma_commit() {
  Fiber& f = self();
  ++f.mma_groups;
  for (auto& m : f.mmas)
    if (m.group == 0) m.group = f.mma_groups;
}

void wgmma_wait(int pending) {
  Fiber& f = self();
  complete_groups(f.mmas, f.mma_groups, pending, "wgmma", [&](const Fiber::Mma& m) { complete(f, m); });
}

void fence_proxy_async() {}

// ---------------------------------------------------------------- mbarrier, setmaxnreg
namespace {

// The barrier's 64 bits: arrivals still pending in the current phase [0, 21),
// the arrival count [21, 42), the current phase's parity (bit 42), a magic
// tag (bits 48..63) that mbarrier_init writes, so poisoned memory is caught.
constexpr uint64_t kMbarMagic = 0x4d42ull << 48, kMbarMagicMask = 0xffffull << 48;
constexpr uint64_t kMbarCount = (1ull << 21) - 1;
constexpr int kMbarPhaseBit = 42;

uint64_t mbar_load(uint64_t* bar, const char* op) {
  if (reinterpret_cast<uintptr_t>(bar) % 8 != 0) fail("%s: mbarrier %p is not 8-byte aligned", op, static_cast<void*>(bar));
  if (!in_shared(bar, 8)) fail("%s: mbarrier %p is not in the block's shared memory", op, static_cast<void*>(bar));
  const uint64_t v = __atomic_load_n(bar, __ATOMIC_RELAXED);
  if ((v & kMbarMagicMask) != kMbarMagic)
    fail("%s: mbarrier %p was never initialised (mbarrier.init)", op, static_cast<void*>(bar));
  return v;
}

// Happens-before objects of a barrier, one per phase parity (as bar_sync):
// the barrier's own two first bytes.
char* mbar_sync(uint64_t* bar, unsigned parity) { return reinterpret_cast<char*>(bar) + (parity & 1u); }

}  // namespace

void mbarrier_init(uint64_t* bar, unsigned count) {
  if (count == 0 || count > kMbarCount) fail("mbarrier.init: count %u (1 .. 2^20)", count);
  if (reinterpret_cast<uintptr_t>(bar) % 8 != 0 || !in_shared(bar, 8))
    fail("mbarrier.init: %p is not 8-byte aligned shared memory", static_cast<void*>(bar));
  __atomic_store_n(bar, kMbarMagic | (uint64_t(count) << 21) | uint64_t(count), __ATOMIC_RELAXED);
}

void mbarrier_arrive(uint64_t* bar) {
  Worker& w = *t_worker;
  const uint64_t v = mbar_load(bar, "mbarrier.arrive");
  const unsigned parity = unsigned(v >> kMbarPhaseBit) & 1u;
  hb_release(mbar_sync(bar, parity));
  const uint64_t pending = (v & kMbarCount) - 1, count = (v >> 21) & kMbarCount;
  if (pending > 0) {
    __atomic_store_n(bar, (v & ~kMbarCount) | pending, __ATOMIC_RELAXED);
    return;
  }
  // The phase completes: the next one starts with the full count, and every
  // thread waiting on this barrier re-checks.
  __atomic_store_n(bar, kMbarMagic | (uint64_t(parity ^ 1u) << kMbarPhaseBit) | (count << 21) | count,
                   __ATOMIC_RELAXED);
  for (unsigned t = 0; t < w.run->threads; ++t) {
    Fiber& g = *w.fibers[t];
    if (ld(g.state) == kAtMbarrier && ld(g.mbar) == bar) st(g.state, kRunnable);
  }
}

void mbarrier_wait(uint64_t* bar, unsigned parity) {
  Worker& w = *t_worker;
  Fiber& f = self();
  if (parity > 1) fail("mbarrier.try_wait.parity: parity %u (0 or 1)", parity);
  while (((mbar_load(bar, "mbarrier.try_wait") >> kMbarPhaseBit) & 1u) == parity) {
    st(f.mbar, bar);
    st(f.mbar_parity, parity);
    st(f.state, kAtMbarrier);
    yield(w, f);
  }
  st(f.mbar, static_cast<uint64_t*>(nullptr));
  hb_acquire(mbar_sync(bar, parity));
}

void cp_async_mbarrier_arrive(uint64_t* bar) {
  mbar_load(bar, "cp.async.mbarrier.arrive");
  Fiber& f = self();
  for (const auto& c : f.copies) std::memcpy(c.dst, c.data, size_t(c.bytes));
  f.copies.clear();
}

void setmaxnreg(bool inc, unsigned regs) {
  if (regs < 24 || regs > 256 || regs % 8 != 0)
    fail("setmaxnreg.%s %u: the count must be a multiple of 8 in [24, 256]", inc ? "inc" : "dec", regs);
  const uint32_t mine = uint32_t(regs) | (inc ? 1u << 16 : 0u);
  uint32_t all[128];
  warpgroup_gather(&mine, 1, all, "setmaxnreg");
  for (unsigned t = 0; t < 128; ++t)
    if (all[t] != mine) fail("setmaxnreg: the warpgroup's threads ask for different counts (thread %u of the group)", t);
}

void run_grid(const Config& c, const void* func, void (*body)(void*), void* ctx) {
  const uint64_t threads = uint64_t(c.block.x) * c.block.y * c.block.z;
  if (threads == 0 || threads > 1024 || c.block.x > 1024 || c.block.y > 1024 || c.block.z > 64 ||
      c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0 || c.grid.x > 0x7fffffffu || c.grid.y > 65535 ||
      c.grid.z > 65535) {
    set_error(cudaErrorInvalidConfiguration);
    return;
  }
  if (c.smem > smem_limit(func)) {
    std::fprintf(stderr, "[cuda emulator] launch refused: %zu B of dynamic shared memory, limit %zu B%s\n", c.smem,
                 smem_limit(func), smem_limit(func) == kDefaultDynamicSmem ? " (cudaFuncSetAttribute not called)" : "");
    set_error(cudaErrorInvalidValue);
    return;
  }
  if (t_worker != nullptr) fail("a kernel launched from a kernel (dynamic parallelism is not emulated)");
  blockDim = c.block;
  gridDim = c.grid;
  Launch L{c, body, ctx, unsigned(threads), 0, uint64_t(c.grid.x) * c.grid.y * c.grid.z};
  L.workers = unsigned(std::min<uint64_t>(kWorkers, L.blocks));
  Worker* ws = pool();
  for (unsigned i = 0; i < L.workers; ++i) {
    std::lock_guard<std::mutex> l(ws[i].m);
    ws[i].launch = &L;
    ++ws[i].posted;
  }
  for (unsigned i = 0; i < L.workers; ++i) ws[i].cv.notify_all();
  for (unsigned i = 0; i < L.workers; ++i) {
    std::unique_lock<std::mutex> l(ws[i].m);
    ws[i].cv.wait(l, [&] { return ws[i].finished == ws[i].posted; });
  }
}

}  // namespace emu

namespace emu {
cudaError_t check_launch_attributes(const cudaLaunchConfig_t& c) {
  for (unsigned i = 0; i < c.numAttrs; ++i) {
    const cudaLaunchAttribute& a = c.attrs[i];
    if (a.id != cudaLaunchAttributeClusterDimension) fail("cudaLaunchKernelEx: launch attribute %d is not emulated", int(a.id));
    const unsigned x = a.val.clusterDim.x, y = a.val.clusterDim.y, z = a.val.clusterDim.z;
    if (x == 0 || y == 0 || z == 0 || uint64_t(x) * y * z > 8 || c.gridDim.x % x != 0 || c.gridDim.y % y != 0 ||
        c.gridDim.z % z != 0) {
      std::fprintf(stderr, "[cuda emulator] launch refused: cluster (%u,%u,%u) for grid (%u,%u,%u): it must divide "
                   "the grid and hold at most 8 blocks\n", x, y, z, c.gridDim.x, c.gridDim.y, c.gridDim.z);
      set_error(cudaErrorInvalidConfiguration);
      return cudaErrorInvalidConfiguration;
    }
  }
  return cudaSuccess;
}
}  // namespace emu

cudaError_t cudaGetLastError() { return emu::take_error(); }
cudaError_t cudaPeekAtLastError() {
  const cudaError_t e = emu::take_error();
  emu::set_error(e);
  return e;
}
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error (emulated)";
    case cudaErrorInvalidValue: return "invalid argument (emulated)";
    case cudaErrorMemoryAllocation: return "out of memory (emulated)";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument (emulated)";
    default: return "error (emulated)";
  }
}
cudaError_t cudaGetDeviceCount(int* n) { *n = 1; return cudaSuccess; }
cudaError_t cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }
cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorInvalidDevice; }
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d) {
  if (d != 0) return cudaErrorInvalidDevice;
  *p = cudaDeviceProp{};
  std::snprintf(p->name, sizeof p->name, "%s", emu::kDeviceName);
  p->major = 9;
  p->minor = 0;
  p->multiProcessorCount = emu::kSMs;
  p->sharedMemPerBlock = emu::kDefaultDynamicSmem;
  p->sharedMemPerBlockOptin = emu::kMaxDynamicSmem;
  p->totalGlobalMem = size_t(8) << 30;
  p->warpSize = 32;
  p->maxThreadsPerBlock = 1024;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int d) {
  if (d != 0) return cudaErrorInvalidDevice;
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *v = emu::kSMs; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock: *v = int(emu::kDefaultDynamicSmem); return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = int(emu::kMaxDynamicSmem); return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *v = 9; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *v = 0; return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}
cudaError_t cudaMalloc(void** p, size_t bytes) {
  // 256-byte aligned like cudaMalloc; exact size so AddressSanitizer sees overruns.
  return posix_memalign(p, 256, bytes ? bytes : 1) == 0 ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaFree(void* p) { std::free(p); return cudaSuccess; }
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  if (bytes) std::memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind k, cudaStream_t) {
  return cudaMemcpy(dst, src, bytes, k);
}
cudaError_t cudaMemset(void* p, int v, size_t bytes) { if (bytes) std::memset(p, v, bytes); return cudaSuccess; }
cudaError_t cudaMemsetAsync(void* p, int v, size_t bytes, cudaStream_t) { return cudaMemset(p, v, bytes); }
cudaError_t cudaStreamCreate(cudaStream_t* s) { *s = new CUstream_st; return cudaSuccess; }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) { return cudaStreamCreate(s); }
cudaError_t cudaStreamDestroy(cudaStream_t s) { delete s; return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, const void* func) {
  if (attr == nullptr || func == nullptr) return cudaErrorInvalidValue;
  *attr = cudaFuncAttributes{};
  attr->maxThreadsPerBlock = 1024;
  attr->ptxVersion = 90;
  attr->binaryVersion = 90;
  attr->maxDynamicSharedSizeBytes = int(emu::smem_limit(func));
  return cudaSuccess;
}
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, const void*, int block, size_t smem) {
  if (n == nullptr || block <= 0 || block > 1024) return cudaErrorInvalidValue;
  const int by_threads = 2048 / block, by_smem = int((228 * 1024) / (smem + 1024));
  *n = std::min(std::min(by_threads, 32), by_smem);
  return cudaSuccess;
}
cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  if (value < 0 || size_t(value) > emu::kMaxDynamicSmem) return cudaErrorInvalidValue;
  emu::set_smem_limit(func, size_t(value));
  return cudaSuccess;
}
