/*
 * vmm.c - helpers on the VMM process state (see vmm.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "vmm.h"

void vmm_pfn_gpas(uint64_t mem_size, uint64_t gpa[VMM_PFN_SAMPLES])
{
	/* Page tables, a vCPU page, a checksum region, the guest image,
	 * the middle and the end of RAM. */
	gpa[0] = GUEST_PML4_ADDR;
	gpa[1] = GUEST_PERCPU_ADDR;
	gpa[2] = GUEST_DATA_ADDR;
	gpa[3] = GUEST_CODE_ADDR;
	gpa[4] = (mem_size / 2) & ~0xfffull;
	gpa[5] = mem_size - 4096;
}

void vmm_pfns(const struct vmm *v, uint64_t pfn[VMM_PFN_SAMPLES])
{
	uint64_t gpa[VMM_PFN_SAMPLES], e;
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);

	vmm_pfn_gpas(v->ram.size, gpa);
	for (unsigned int i = 0; i < VMM_PFN_SAMPLES; i++) {
		uint64_t va = (uintptr_t)v->ram.addr + gpa[i];

		/* A read maps the page here if it was not (same frame). */
		(void)*(volatile uint8_t *)(uintptr_t)va;
		pfn[i] = 0;
		if (fd >= 0 && pread(fd, &e, 8, (va / 4096) * 8) == 8 &&
		    (e >> 63) & 1)
			pfn[i] = e & ((1ull << 55) - 1);
	}
	if (fd >= 0)
		close(fd);
}

int vmm_cprxfer_opts(const struct vmm *v, cprxfer_opts **out,
		     struct vmm_err *err)
{
	cprxfer_opts *o = cprxfer_opts_new();
	int r;

	if (!o)
		return vmm_errf(err, -ENOMEM, "options: no memory");
	r = cprxfer_opts_set_tag(o, v->o.tag ? v->o.tag : VMM_TAG);
	if (r >= 0)
		r = cprxfer_opts_set_timeout(o, v->o.timeout_ms);
	/*
	 * --mem-path RAM is a file, and the peer is this same program
	 * under our own uid: trust it (and the file's 0600) not to
	 * truncate the file under the guest.
	 */
	if (r >= 0)
		r = cprxfer_opts_allow_file_ram(o, 1);
	if (r < 0) {
		cprxfer_opts_free(o);
		return vmm_errf(err, r, "options: %s", cprxfer_errmsg());
	}
	*out = o;
	return 0;
}

bool vmm_ram_is_file(const struct vmm *v, char *path, size_t len)
{
	char link[64];
	ssize_t n;

	snprintf(link, sizeof(link), "/proc/self/fd/%d", v->ram.fd);
	n = readlink(link, path, len - 1);
	if (n <= 0)
		return false;
	path[n] = 0;
	return path[0] == '/' && strncmp(path, "/memfd:", 7) &&
	       !strstr(path, " (deleted)");
}
