/*
 * guest.c - loading and observing the built-in guest (see guest.h).
 */
#include <errno.h>
#include <time.h>

#include "guest.h"

/* guest.S, assembled into this binary. */
extern const uint8_t demo_vmm_guest_start[];
extern const uint8_t demo_vmm_guest_end[];
extern const uint8_t demo_vmm_guest_warm[];

#define PTE_P  0x001ull
#define PTE_RW 0x002ull
#define PTE_US 0x004ull
#define PTE_PS 0x080ull

static inline uint64_t *gpa64(void *mem, uint64_t gpa)
{
	return (uint64_t *)((uint8_t *)mem + gpa);
}

static void put64(void *mem, uint64_t gpa, uint64_t v)
{
	__atomic_store_n(gpa64(mem, gpa), v, __ATOMIC_RELEASE);
}

static uint64_t get64(const void *mem, uint64_t gpa)
{
	return __atomic_load_n(gpa64((void *)mem, gpa), __ATOMIC_ACQUIRE);
}

static uint64_t tss_addr(unsigned int cpu)
{
	return GUEST_TSS_ADDR + (uint64_t)cpu * GUEST_TSS_STRIDE;
}

static uint64_t kstack_top(unsigned int cpu)
{
	return GUEST_KSTACK_ADDR + ((uint64_t)(cpu + 1) << GUEST_KSTACK_SHIFT);
}

int guest_setup(void *mem, uint64_t mem_size, unsigned int ncpus,
		uint32_t tsc_khz, unsigned int print_ms, struct vmm_err *err)
{
	size_t image = demo_vmm_guest_end - demo_vmm_guest_start;
	uint64_t npd = (mem_size + (1ull << 30) - 1) >> 30;
	uint64_t gdt = GUEST_GDT_ADDR, a, i;
	unsigned int cpu;

	if (mem_size < GUEST_MIN_MEM || mem_size > GUEST_MAX_MEM ||
	    mem_size & ((2u << 20) - 1))
		return vmm_errf(
			err, -EINVAL,
			"guest RAM %llu bytes: need a multiple of 2 MiB in 16 MiB..64 GiB",
			(unsigned long long)mem_size);
	if (!ncpus || ncpus > GUEST_MAX_CPUS)
		return vmm_errf(err, -EINVAL, "guest: %u vCPUs, 1..%d", ncpus,
				GUEST_MAX_CPUS);
	if (image > GUEST_CODE_MAX)
		return vmm_errf(err, -E2BIG, "guest image %zu bytes", image);

	memcpy((uint8_t *)mem + GUEST_CODE_ADDR, demo_vmm_guest_start, image);

	/* Page tables: PML4[0] -> PDPT, PDPT[i] -> PD i, 2 MiB pages. */
	put64(mem, GUEST_PML4_ADDR, GUEST_PDPT_ADDR | PTE_P | PTE_RW | PTE_US);
	for (i = 0; i < npd; i++)
		put64(mem, GUEST_PDPT_ADDR + i * 8,
		      (GUEST_PD_ADDR + i * 4096) | PTE_P | PTE_RW | PTE_US);
	for (a = 0; a < mem_size; a += 2u << 20)
		put64(mem, GUEST_PD_ADDR + (a >> 21) * 8,
		      a | PTE_P | PTE_RW | PTE_US | PTE_PS);

	/* GDT: null, kernel code, kernel data, user data, user code. */
	put64(mem, gdt + 0x00, 0);
	put64(mem, gdt + 0x08, 0x00af9b000000ffffull);
	put64(mem, gdt + 0x10, 0x00cf93000000ffffull);
	put64(mem, gdt + 0x18, 0x00cff3000000ffffull);
	put64(mem, gdt + 0x20, 0x00affb000000ffffull);
	for (cpu = 0; cpu < ncpus; cpu++) {
		uint64_t base = tss_addr(cpu), lim = 103;
		uint64_t lo = (lim & 0xffff) | (base & 0xffffff) << 16 |
			      0x8bull << 40 | /* present, busy TSS */
			      ((lim >> 16) & 0xf) << 48 |
			      ((base >> 24) & 0xff) << 56;

		put64(mem, gdt + GUEST_TSS_SEL0 + cpu * 16, lo);
		put64(mem, gdt + GUEST_TSS_SEL0 + cpu * 16 + 8, base >> 32);
		/* TSS: rsp0 at offset 4, no I/O bitmap (base past limit). */
		memset((uint8_t *)mem + base, 0, GUEST_TSS_STRIDE);
		memcpy((uint8_t *)mem + base + 4,
		       &(uint64_t){ kstack_top(cpu) - 16 }, 8);
		*((uint16_t *)((uint8_t *)mem + base + 102)) = 104;
		/* The cpu index sits at the kernel stack top. */
		put64(mem, kstack_top(cpu) - 8, cpu);
	}

	put64(mem, GUEST_PARAM_ADDR + P_VERSION, GUEST_PARAM_VERSION);
	put64(mem, GUEST_PARAM_ADDR + P_TSC_KHZ, tsc_khz);
	put64(mem, GUEST_PARAM_ADDR + P_MEM_SIZE, mem_size);
	put64(mem, GUEST_PARAM_ADDR + P_NCPUS, ncpus);
	put64(mem, GUEST_PARAM_ADDR + P_PRINT_MS, print_ms);
	/* Gaps of 20 us or more go into each vCPU's gap ring. */
	put64(mem, GUEST_PARAM_ADDR + P_GAP_REC,
	      tsc_khz ? (uint64_t)tsc_khz * 20 / 1000 : 40000);
	put64(mem, GUEST_PARAM_ADDR + P_MAGIC, GUEST_PARAM_MAGIC);
	return 0;
}

void guest_boot_regs(unsigned int cpu, struct kvm_sregs *s,
		     struct kvm_regs *regs)
{
	struct kvm_segment code = {
		.base = 0,
		.limit = 0xffffffff,
		.selector = GUEST_KERNEL_CS,
		.type = 11,
		.present = 1,
		.dpl = 0,
		.db = 0,
		.s = 1,
		.l = 1,
		.g = 1,
	};
	struct kvm_segment data = {
		.base = 0,
		.limit = 0xffffffff,
		.selector = GUEST_KERNEL_DS,
		.type = 3,
		.present = 1,
		.dpl = 0,
		.db = 1,
		.s = 1,
		.l = 0,
		.g = 1,
	};
	struct kvm_segment tr = {
		.base = tss_addr(cpu),
		.limit = 103,
		.selector = GUEST_TSS_SEL0 + cpu * 16,
		.type = 11,
		.present = 1,
		.s = 0,
	};

	s->cs = code;
	s->ds = s->es = s->fs = s->gs = s->ss = data;
	s->tr = tr;
	s->ldt.selector = 0;
	s->ldt.present = 0;
	s->ldt.unusable = 1;
	s->gdt.base = GUEST_GDT_ADDR;
	s->gdt.limit = GUEST_TSS_SEL0 + GUEST_MAX_CPUS * 16 - 1;
	s->idt.base = GUEST_IDT_ADDR;
	s->idt.limit = GUEST_IDT_VECTORS * 16 - 1;
	s->cr0 = 0x80050033; /* PG AM WP NE ET MP PE */
	s->cr3 = GUEST_PML4_ADDR;
	s->cr4 = 0x620;	 /* OSXMMEXCPT OSFXSR PAE */
	s->efer = 0x500; /* LMA LME */

	memset(regs, 0, sizeof(*regs));
	regs->rip = GUEST_CODE_ADDR;
	regs->rsp = kstack_top(cpu) - 16;
	regs->rdi = cpu;
	regs->rflags = 0x2;
}

void guest_read_cpu(const void *mem, unsigned int cpu,
		    struct guest_cpu_stats *st)
{
	uint64_t pc = GUEST_PERCPU_ADDR + ((uint64_t)cpu << GUEST_PERCPU_SHIFT);

	st->state = get64(mem, pc + PC_STATE);
	st->counter = get64(mem, pc + PC_COUNTER);
	st->checksum = get64(mem, pc + PC_CHECKSUM);
	st->ticks = get64(mem, pc + PC_TICKS);
	st->gap_max_cycles = get64(mem, pc + PC_GAP_MAX);
	st->gap_max_us = get64(mem, pc + PC_GAP_MAX_US);
	st->last_tsc = get64(mem, pc + PC_LAST_TSC);
	st->error = get64(mem, pc + PC_ERROR);
}

uint64_t guest_tsc_khz(const void *mem)
{
	return get64(mem, GUEST_PARAM_ADDR + P_TSC_KHZ);
}

int guest_mailbox(void *mem, uint64_t cmd, uint64_t arg, int timeout_ms,
		  struct guest_mailbox_result *res, struct vmm_err *err)
{
	const uint64_t mb = GUEST_MAILBOX_ADDR;
	struct timespec pause = { 0, 100000 };
	uint64_t seq, deadline;

	seq = get64(mem, mb + MB_CMD_SEQ) + 1;
	if (get64(mem, mb + MB_DONE_SEQ) != seq - 1)
		return vmm_errf(err, -EBUSY, "guest mailbox: command pending");
	put64(mem, mb + MB_CMD, cmd);
	put64(mem, mb + MB_ARG, arg);
	put64(mem, mb + MB_CMD_SEQ, seq);
	deadline = vmm_now_ns() + (uint64_t)timeout_ms * 1000000;
	while (get64(mem, mb + MB_DONE_SEQ) != seq) {
		if (vmm_now_ns() > deadline)
			return vmm_errf(
				err, -ETIMEDOUT,
				"guest mailbox: command %llu not done in %d ms",
				(unsigned long long)cmd, timeout_ms);
		nanosleep(&pause, NULL);
	}
	if (get64(mem, mb + MB_STATUS))
		return vmm_errf(err, -EPROTO,
				"guest mailbox: command %llu unknown",
				(unsigned long long)cmd);
	res->us = get64(mem, mb + MB_RESULT_US);
	res->ns = get64(mem, mb + MB_RESULT_NS);
	res->count = get64(mem, mb + MB_RESULT_COUNT);
	return 0;
}

int guest_find_gap(const void *mem, unsigned int cpu, uint64_t stop_tsc,
		   uint64_t *start, uint64_t *cycles)
{
	uint64_t pc = GUEST_PERCPU_ADDR + ((uint64_t)cpu << GUEST_PERCPU_SHIFT);
	uint64_t n = get64(mem, pc + PC_GAP_IDX), i, a, b, best = ~0ull;
	uint64_t skew = get64(mem, GUEST_PARAM_ADDR + P_TSC_KHZ) / 5;

	if (get64(mem, pc + PC_LAST_TSC) == stop_tsc)
		return -EAGAIN;
	/*
	 * The pause starts at the last TSC the vCPU read before it
	 * stopped: PC_LAST_TSC itself, or, if it stopped between its rdtsc
	 * and the store of PC_LAST_TSC (rdtsc exits on kvm_pvm, so a stop
	 * lands there often), that rdtsc, a few cycles later.
	 */
	for (i = 0; i < n && i < GUEST_GAP_RING; i++) {
		uint64_t e = pc + PC_GAPS + ((n - 1 - i) % GUEST_GAP_RING) * 16;

		a = get64(mem, e);
		b = get64(mem, e + 8);
		if (a >= stop_tsc && a - stop_tsc <= skew && b >= a &&
		    a < best) {
			best = a;
			*start = a;
			*cycles = b - a;
		}
	}
	return best == ~0ull ? -ENOENT : 0;
}

void guest_warm_regs(struct kvm_sregs *s, struct kvm_regs *regs)
{
	struct kvm_segment code = {
		.base = 0,
		.limit = 0xffffffff,
		.selector = GUEST_USER_CS,
		.type = 11,
		.present = 1,
		.dpl = 3,
		.db = 0,
		.s = 1,
		.l = 1,
		.g = 1,
	};
	struct kvm_segment data = {
		.base = 0,
		.limit = 0xffffffff,
		.selector = GUEST_USER_DS,
		.type = 3,
		.present = 1,
		.dpl = 3,
		.db = 1,
		.s = 1,
		.l = 0,
		.g = 1,
	};

	guest_boot_regs(0, s, regs);
	s->cs = code;
	s->ds = s->es = s->fs = s->gs = s->ss = data;
	s->idt.base = 0;
	s->idt.limit = 0;
	regs->rip = GUEST_CODE_ADDR +
		    (uint64_t)(demo_vmm_guest_warm - demo_vmm_guest_start);
	regs->rsp = 0;
	regs->rflags = 0x2;
}
