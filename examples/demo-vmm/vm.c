/*
 * vm.c - VM creation, guest RAM slot, VM-wide state (see vm.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "vm.h"

#define VM_STATE_VERSION  1
#define CPUID_MAX_ENTRIES 256

static const struct {
	int cap;
	const char *name;
} required_caps[] = {
	{ KVM_CAP_IRQCHIP, "IRQCHIP" },
	{ KVM_CAP_USER_MEMORY, "USER_MEMORY" },
	{ KVM_CAP_XSAVE, "XSAVE" },
	{ KVM_CAP_XCRS, "XCRS" },
	{ KVM_CAP_VCPU_EVENTS, "VCPU_EVENTS" },
	{ KVM_CAP_DEBUGREGS, "DEBUGREGS" },
	{ KVM_CAP_GET_TSC_KHZ, "GET_TSC_KHZ" },
	{ KVM_CAP_MP_STATE, "MP_STATE" },
	{ KVM_CAP_ADJUST_CLOCK, "ADJUST_CLOCK" },
	{ KVM_CAP_IMMEDIATE_EXIT, "IMMEDIATE_EXIT" },
};

static int get_supported_cpuid(struct vm *vm, struct vmm_err *err)
{
	struct kvm_cpuid2 *c;

	c = calloc(1, sizeof(*c) + CPUID_MAX_ENTRIES *
					   sizeof(struct kvm_cpuid_entry2));
	if (!c)
		return vmm_errf(err, -ENOMEM, "supported CPUID: no memory");
	c->nent = CPUID_MAX_ENTRIES;
	if (ioctl(vm->kvm_fd, KVM_GET_SUPPORTED_CPUID, c) < 0) {
		free(c);
		return vmm_errno(err, "KVM_GET_SUPPORTED_CPUID");
	}
	vm->cpuid = c;
	return 0;
}

static int get_msr_list(struct vm *vm, struct vmm_err *err)
{
	struct kvm_msr_list probe = { .nmsrs = 0 };
	struct kvm_msr_list *l;

	/* The first call fails with E2BIG and tells the count. */
	if (ioctl(vm->kvm_fd, KVM_GET_MSR_INDEX_LIST, &probe) < 0 &&
	    errno != E2BIG)
		return vmm_errno(err, "KVM_GET_MSR_INDEX_LIST");
	l = calloc(1, sizeof(*l) + probe.nmsrs * sizeof(l->indices[0]));
	if (!l)
		return vmm_errf(err, -ENOMEM, "MSR list: no memory");
	l->nmsrs = probe.nmsrs;
	if (ioctl(vm->kvm_fd, KVM_GET_MSR_INDEX_LIST, l) < 0) {
		free(l);
		return vmm_errno(err, "KVM_GET_MSR_INDEX_LIST (%u)",
				 probe.nmsrs);
	}
	vm->msrs = l;
	return 0;
}

int vm_create(struct vm **out, struct vmm_err *err)
{
	struct vm *vm;
	unsigned int i;
	int r;

	vm = calloc(1, sizeof(*vm));
	if (!vm)
		return vmm_errf(err, -ENOMEM, "vm: no memory");
	vm->vm_fd = -1;
	vm->high_ready = 1;
	pthread_mutex_init(&vm->high_lock, NULL);
	pthread_cond_init(&vm->high_cond, NULL);
	vm->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (vm->kvm_fd < 0) {
		r = vmm_errno(err, "open /dev/kvm");
		goto fail;
	}
	r = ioctl(vm->kvm_fd, KVM_GET_API_VERSION, 0);
	if (r != KVM_API_VERSION) {
		r = vmm_errf(err, -ENOTSUP, "KVM API version %d, need %d", r,
			     KVM_API_VERSION);
		goto fail;
	}
	for (i = 0; i < sizeof(required_caps) / sizeof(required_caps[0]); i++) {
		if (ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION,
			  required_caps[i].cap) <= 0) {
			r = vmm_errf(err, -ENOTSUP, "KVM lacks KVM_CAP_%s",
				     required_caps[i].name);
			goto fail;
		}
	}
	vm->xsave_size = ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE2);
	if (vm->xsave_size < (int)sizeof(struct kvm_xsave))
		vm->xsave_size = sizeof(struct kvm_xsave);
	vm->run_size = ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (vm->run_size < (int)sizeof(struct kvm_run)) {
		r = vmm_errno(err, "KVM_GET_VCPU_MMAP_SIZE");
		goto fail;
	}
	r = get_supported_cpuid(vm, err);
	if (r < 0)
		goto fail;
	r = get_msr_list(vm, err);
	if (r < 0)
		goto fail;
	/* KVM_CREATE_VM has no CLOEXEC flag: KVM sets O_CLOEXEC itself. */
	vm->vm_fd = ioctl(vm->kvm_fd, KVM_CREATE_VM, 0);
	if (vm->vm_fd < 0) {
		r = vmm_errno(err, "KVM_CREATE_VM");
		goto fail;
	}
	/* VM-wide KVM_GET_TSC_KHZ is newer; vcpu_create falls back. */
	r = ioctl(vm->vm_fd, KVM_GET_TSC_KHZ, 0);
	vm->tsc_khz = r > 0 ? r : 0;
	*out = vm;
	return 0;
fail:
	vm_destroy(vm);
	return r;
}

int vm_create_irqchip(struct vm *vm, struct vmm_err *err)
{
	if (ioctl(vm->vm_fd, KVM_CREATE_IRQCHIP, 0) < 0)
		return vmm_errno(err, "KVM_CREATE_IRQCHIP");
	return 0;
}

static int set_slot(struct vm *vm, uint32_t slot, uint8_t *mem, uint64_t gpa,
		    uint64_t size, struct vmm_err *err)
{
	struct kvm_userspace_memory_region region = {
		.slot = slot,
		.guest_phys_addr = gpa,
		.memory_size = size,
		.userspace_addr = (uintptr_t)(mem + gpa),
	};

	if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		return vmm_errno(err,
				 "KVM_SET_USER_MEMORY_REGION slot %u, %llu MiB",
				 slot, (unsigned long long)(size >> 20));
	return 0;
}

int vm_set_memory_lazy(struct vm *vm, void *mem, uint64_t size, uint64_t low,
		       struct vmm_err *err)
{
	int r;

	if (!mem || !size || size & 0xfff)
		return vmm_errf(err, -EINVAL, "guest RAM: bad size %llu",
				(unsigned long long)size);
	if (low > size || low & 0x1fffff)
		low = size;
	r = set_slot(vm, 0, mem, 0, low, err);
	if (r < 0)
		return r;
	vm->mem = mem;
	vm->mem_size = size;
	vm->mem_low = low;
	__atomic_store_n(&vm->high_ready, low == size, __ATOMIC_RELEASE);
	return 0;
}

int vm_set_memory(struct vm *vm, void *mem, uint64_t size, struct vmm_err *err)
{
	return vm_set_memory_lazy(vm, mem, size, size, err);
}

int vm_set_memory_high(struct vm *vm, struct vmm_err *err)
{
	int r = 0;

	if (__atomic_load_n(&vm->high_ready, __ATOMIC_ACQUIRE))
		return 0;
	r = set_slot(vm, 1, vm->mem, vm->mem_low, vm->mem_size - vm->mem_low,
		     err);
	pthread_mutex_lock(&vm->high_lock);
	__atomic_store_n(&vm->high_ready, r < 0 ? -1 : 1, __ATOMIC_RELEASE);
	pthread_cond_broadcast(&vm->high_cond);
	pthread_mutex_unlock(&vm->high_lock);
	return r;
}

int vm_mmio_ram(struct vm *vm, uint64_t gpa, bool is_write, uint8_t *data,
		uint32_t len)
{
	int ready;

	if (gpa < vm->mem_low || gpa >= vm->mem_size ||
	    len > vm->mem_size - gpa)
		return 0;
	pthread_mutex_lock(&vm->high_lock);
	while (!(ready = __atomic_load_n(&vm->high_ready, __ATOMIC_ACQUIRE)))
		pthread_cond_wait(&vm->high_cond, &vm->high_lock);
	pthread_mutex_unlock(&vm->high_lock);
	if (ready < 0)
		return -EFAULT;
	/*
	 * KVM decoded the instruction and waits for its data: do this one
	 * access on RAM; the next ones find the memslot.
	 */
	if (is_write)
		memcpy((uint8_t *)vm->mem + gpa, data, len);
	else
		memcpy(data, (uint8_t *)vm->mem + gpa, len);
	return 1;
}

static const struct {
	const char *name;
	uint32_t chip_id;
} irqchips[] = {
	{ "pic0", KVM_IRQCHIP_PIC_MASTER },
	{ "pic1", KVM_IRQCHIP_PIC_SLAVE },
	{ "ioapic", KVM_IRQCHIP_IOAPIC },
};

int vm_save_state(struct vm *vm, struct blobset *set, struct vmm_err *err)
{
	struct kvm_irqchip chip;
	struct kvm_clock_data clock;
	unsigned int i;
	uint8_t *b;
	size_t len;
	int r;

	for (i = 0; i < 3; i++) {
		memset(&chip, 0, sizeof(chip));
		chip.chip_id = irqchips[i].chip_id;
		if (ioctl(vm->vm_fd, KVM_GET_IRQCHIP, &chip) < 0)
			return vmm_errno(err, "KVM_GET_IRQCHIP %s",
					 irqchips[i].name);
		b = blob_alloc(VM_STATE_VERSION, sizeof(chip), &len);
		if (b)
			memcpy(b + BLOB_HDR, &chip, sizeof(chip));
		r = blobset_add(set, irqchips[i].name, b, len, err);
		if (r < 0)
			return r;
	}
	memset(&clock, 0, sizeof(clock));
	if (ioctl(vm->vm_fd, KVM_GET_CLOCK, &clock) < 0)
		return vmm_errno(err, "KVM_GET_CLOCK");
	b = blob_alloc(VM_STATE_VERSION, sizeof(clock), &len);
	if (b)
		memcpy(b + BLOB_HDR, &clock, sizeof(clock));
	return blobset_add(set, "clock", b, len, err);
}

int vm_restore_state(struct vm *vm, const struct blobset *set,
		     struct vmm_err *err)
{
	struct kvm_irqchip chip;
	struct kvm_clock_data clock;
	const uint8_t *p;
	unsigned int i;
	size_t len;
	int r;

	for (i = 0; i < 3; i++) {
		r = blob_payload(set, irqchips[i].name, VM_STATE_VERSION,
				 sizeof(chip), sizeof(chip), &p, &len, err);
		if (r < 0)
			return r;
		memcpy(&chip, p, sizeof(chip));
		if (chip.chip_id != irqchips[i].chip_id)
			return vmm_errf(err, -EBADMSG, "state '%s': chip id %u",
					irqchips[i].name, chip.chip_id);
		if (ioctl(vm->vm_fd, KVM_SET_IRQCHIP, &chip) < 0)
			return vmm_errno(err, "KVM_SET_IRQCHIP %s",
					 irqchips[i].name);
	}
	r = blob_payload(set, "clock", VM_STATE_VERSION, sizeof(clock),
			 sizeof(clock), &p, &len, err);
	if (r < 0)
		return r;
	memcpy(&clock, p, sizeof(clock));
	clock.flags &= KVM_CLOCK_REALTIME;
	if (ioctl(vm->vm_fd, KVM_SET_CLOCK, &clock) < 0)
		return vmm_errno(err, "KVM_SET_CLOCK");
	return 0;
}

void vm_destroy(struct vm *vm)
{
	if (!vm)
		return;
	if (vm->vm_fd >= 0)
		close(vm->vm_fd);
	if (vm->kvm_fd >= 0)
		close(vm->kvm_fd);
	free(vm->cpuid);
	free(vm->msrs);
	pthread_cond_destroy(&vm->high_cond);
	pthread_mutex_destroy(&vm->high_lock);
	free(vm);
}
