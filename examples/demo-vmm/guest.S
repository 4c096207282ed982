/*
 * guest.S - the built-in demo-vmm guest, a tiny 64-bit OS.
 *
 * Assembled into the demo-vmm binary as a read-only blob between
 * demo_vmm_guest_start and demo_vmm_guest_end; the VMM copies it to
 * GUEST_CODE_ADDR and starts every vCPU at its first byte in long mode,
 * ring 0, with rdi = cpu index and rsp on that cpu's kernel stack.  All
 * addresses inside the blob are taken RIP-relative, so the blob runs
 * wherever it is copied.
 *
 * Ring 0 (emulated on kvm_pvm, so kept small): fills the IDT, cpu0
 * programs the 16550 at 0x3f8, then each cpu drops to ring 3 with iretq.
 * Ring 3 calls the kernel with "ud2" (rax = syscall number): the #UD
 * handler recognises a ud2 from CPL3 and returns past it (rip += 2).
 * int 0x80 and syscall do not work from CPL3 on kvm_pvm, exceptions do.
 * Any other exception prints a loud line and halts that cpu.
 *
 * Ring 3 (native, fast) runs the workload forever; see user_loop.
 * Register use in ring 3: r15 per-cpu page, r14 checksum region,
 * r13 counter (register copy), r12 checksum (register copy), rbp TSC at
 * the previous iteration, rbx TSC deadline of the next tick line.
 */
#include "guest-layout.h"

#define F_R15	0
#define F_RBP	64
#define F_RDI	72
#define F_RSI	80
#define F_RDX	88
#define F_RAX	112
#define F_VEC	120
#define F_ERR	128
#define F_RIP	136
#define F_CS	144
#define F_RFLAGS 152
#define F_RSP	160

	.section .rodata.demo_vmm_guest, "a"
	.balign 4096
	.globl demo_vmm_guest_start
	.globl demo_vmm_guest_end
	.code64
demo_vmm_guest_start:

/* ---- ring 0 entry, every cpu ---------------------------------------- */
kentry:
	mov	%rdi, %r15
	call	idt_fill
	test	%r15, %r15
	jnz	1f
	call	uart_init
	lea	s_banner(%rip), %rsi
	mov	$(s_banner_end - s_banner), %edx
	call	console_write
1:
	mov	%r15, %rax
	inc	%rax
	shl	$GUEST_USTACK_SHIFT, %rax
	add	$GUEST_USTACK_ADDR, %rax
	pushq	$GUEST_USER_DS
	push	%rax
	pushq	$0x2			/* rflags: IF = 0 */
	pushq	$GUEST_USER_CS
	lea	user_main(%rip), %rax
	push	%rax
	mov	%r15, %rdi
	iretq

/* Fill GUEST_IDT_VECTORS interrupt gates; idempotent, every cpu runs it. */
idt_fill:
	lea	isr_stubs(%rip), %rax
	mov	$GUEST_IDT_ADDR, %rdi
	xor	%ecx, %ecx
1:	mov	%rax, %rdx
	and	$0xffff, %edx
	or	$(GUEST_KERNEL_CS << 16), %edx
	mov	%rax, %rsi
	shr	$16, %rsi
	and	$0xffff, %esi
	shl	$48, %rsi
	or	%rsi, %rdx
	mov	$0x8e, %esi		/* present DPL0 intr gate */
	shl	$40, %rsi
	or	%rsi, %rdx
	mov	%rdx, (%rdi)
	mov	%rax, %rdx
	shr	$32, %rdx
	mov	%rdx, 8(%rdi)
	add	$16, %rax
	add	$16, %rdi
	inc	%ecx
	cmp	$GUEST_IDT_VECTORS, %ecx
	jb	1b
	ret

/* 16550 at COM1: 115200 8N1, FIFOs on, no interrupts. */
uart_init:
	mov	$(GUEST_COM1 + 1), %dx
	xor	%eax, %eax
	out	%al, %dx		/* IER = 0 */
	mov	$(GUEST_COM1 + 3), %dx
	mov	$0x80, %al
	out	%al, %dx		/* LCR: DLAB */
	mov	$GUEST_COM1, %dx
	mov	$1, %al
	out	%al, %dx		/* DLL */
	mov	$(GUEST_COM1 + 1), %dx
	xor	%eax, %eax
	out	%al, %dx		/* DLM */
	mov	$(GUEST_COM1 + 3), %dx
	mov	$0x03, %al
	out	%al, %dx		/* LCR: 8N1 */
	mov	$(GUEST_COM1 + 2), %dx
	mov	$0xc7, %al
	out	%al, %dx		/* FCR: enable and clear FIFOs */
	mov	$(GUEST_COM1 + 4), %dx
	mov	$0x0b, %al
	out	%al, %dx		/* MCR: DTR RTS OUT2 */
	ret

/*
 * console_write: rsi = buffer, rdx = length.  Ring 0 only.  Takes the
 * console spinlock so lines from several cpus do not interleave, waits
 * for THRE once per 16 bytes (the transmit FIFO depth).
 * Clobbers rax, rcx, rdx, rsi, r8.
 */
console_write:
	mov	%rdx, %rcx
1:	mov	$1, %eax
	xchg	%eax, GUEST_CONSOLE_LOCK
	test	%eax, %eax
	jz	2f
	pause
	jmp	1b
2:	xor	%r8d, %r8d
3:	test	%rcx, %rcx
	jz	5f
	test	%r8d, %r8d
	jnz	4f
	mov	$(GUEST_COM1 + 5), %dx
6:	in	%dx, %al
	test	$0x20, %al
	jz	6b
	mov	$16, %r8d
4:	movzbl	(%rsi), %eax
	mov	$GUEST_COM1, %dx
	out	%al, %dx
	inc	%rsi
	dec	%rcx
	dec	%r8d
	jmp	3b
5:	movl	$0, GUEST_CONSOLE_LOCK
	ret

/* ---- exceptions and the syscall gate -------------------------------- */
	.balign 16
isr_stubs:
	.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15, \
		16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	.balign 16
	/* vectors that push an error code */
	.if (\v == 8) || ((\v >= 10) && (\v <= 14)) || (\v == 17) || \
		(\v == 21) || (\v == 29) || (\v == 30)
	pushq	$\v
	.else
	pushq	$0
	pushq	$\v
	.endif
	jmp	isr_common
	.endr

isr_common:
	push	%rax
	push	%rbx
	push	%rcx
	push	%rdx
	push	%rsi
	push	%rdi
	push	%rbp
	push	%r8
	push	%r9
	push	%r10
	push	%r11
	push	%r12
	push	%r13
	push	%r14
	push	%r15
	cmpq	$6, F_VEC(%rsp)
	jne	fault
	testb	$3, F_CS(%rsp)
	jz	fault
	mov	F_RIP(%rsp), %rbx
	cmpw	$0x0b0f, (%rbx)		/* ud2 */
	jne	fault
	addq	$2, F_RIP(%rsp)
	mov	F_RAX(%rsp), %rax
	cmp	$SYS_WRITE, %rax
	je	sys_write
	cmp	$SYS_NOP, %rax
	je	sys_ok
	cmp	$SYS_PIO_BENCH, %rax
	je	sys_pio_bench
	cmp	$SYS_HALT, %rax
	je	halt_forever
	movq	$-38, F_RAX(%rsp)	/* -ENOSYS */
	jmp	isr_return
sys_write:
	mov	F_RDI(%rsp), %rsi
	mov	F_RSI(%rsp), %rdx
	call	console_write
	jmp	sys_ok
sys_pio_bench:
	mov	F_RDI(%rsp), %rcx
	mov	$(GUEST_COM1 + 7), %dx
1:	test	%rcx, %rcx
	jz	sys_ok
	in	%dx, %al
	dec	%rcx
	jmp	1b
sys_ok:
	movq	$0, F_RAX(%rsp)
isr_return:
	pop	%r15
	pop	%r14
	pop	%r13
	pop	%r12
	pop	%r11
	pop	%r10
	pop	%r9
	pop	%r8
	pop	%rbp
	pop	%rdi
	pop	%rsi
	pop	%rdx
	pop	%rcx
	pop	%rbx
	pop	%rax
	add	$16, %rsp
	iretq

/* Unexpected exception: say so loudly on the console and halt this cpu. */
fault:
	mov	%rsp, %rax
	or	$((1 << GUEST_KSTACK_SHIFT) - 1), %rax
	mov	-7(%rax), %r15		/* cpu index at stack top */
	mov	%r15, %r14
	shl	$GUEST_PERCPU_SHIFT, %r14
	add	$GUEST_PERCPU_ADDR, %r14
	mov	F_VEC(%rsp), %rax
	mov	%rax, PC_ERROR(%r14)
	movq	$PC_STATE_FAULT, PC_STATE(%r14)
	lea	PC_KBUF(%r14), %rdi
	lea	s_exc0(%rip), %rsi
	call	fmt_str
	mov	%r15, %rax
	call	fmt_dec
	lea	s_exc1(%rip), %rsi
	call	fmt_str
	mov	F_VEC(%rsp), %rax
	call	fmt_dec
	lea	s_exc2(%rip), %rsi
	call	fmt_str
	mov	F_ERR(%rsp), %rax
	call	fmt_hex
	lea	s_exc3(%rip), %rsi
	call	fmt_str
	mov	F_RIP(%rsp), %rax
	call	fmt_hex
	lea	s_exc4(%rip), %rsi
	call	fmt_str
	mov	F_CS(%rsp), %rax
	call	fmt_hex
	lea	s_exc5(%rip), %rsi
	call	fmt_str
	mov	%cr2, %rax
	call	fmt_hex
	lea	s_exc6(%rip), %rsi
	call	fmt_str
	mov	%rdi, %rdx
	lea	PC_KBUF(%r14), %rsi
	sub	%rsi, %rdx
	call	console_write
halt_forever:
	cli
	hlt
	jmp	halt_forever

/* ---- formatting, callable from both rings ---------------------------- */

/* fmt_str: append the NUL-terminated rsi at rdi.  Clobbers rax, rsi. */
fmt_str:
1:	movzbl	(%rsi), %eax
	test	%al, %al
	jz	2f
	mov	%al, (%rdi)
	inc	%rsi
	inc	%rdi
	jmp	1b
2:	ret

/* fmt_dec: append rax in decimal.  Clobbers rax, rcx, rdx, rsi, r8. */
fmt_dec:
	sub	$32, %rsp
	lea	32(%rsp), %r8
	mov	%r8, %rsi
	mov	$10, %ecx
1:	xor	%edx, %edx
	div	%rcx
	add	$'0', %dl
	dec	%rsi
	mov	%dl, (%rsi)
	test	%rax, %rax
	jnz	1b
2:	movzbl	(%rsi), %eax
	mov	%al, (%rdi)
	inc	%rsi
	inc	%rdi
	cmp	%r8, %rsi
	jb	2b
	add	$32, %rsp
	ret

/* fmt_hex: append rax as 16 hex digits.  Clobbers rax, rcx, rdx, rsi. */
fmt_hex:
	mov	$16, %ecx
	lea	s_hex(%rip), %rsi
1:	rol	$4, %rax
	mov	%eax, %edx
	and	$15, %edx
	movzbl	(%rsi,%rdx), %edx
	mov	%dl, (%rdi)
	inc	%rdi
	dec	%ecx
	jnz	1b
	ret

/* ---- ring 3 workload ------------------------------------------------- */

/* rdtsc into rax as one 64-bit value; clobbers rdx. */
.macro	TSC
	rdtsc
	shl	$32, %rdx
	or	%rdx, %rax
.endm

/* rax = sum of this cpu's checksum region (r14).  Clobbers rcx. */
region_sum:
	xor	%eax, %eax
	xor	%ecx, %ecx
1:	add	(%r14,%rcx,8), %rax
	inc	%rcx
	cmp	$GUEST_DATA_WORDS, %rcx
	jb	1b
	ret

/* rax = rax TSC cycles * rcx / tsc_khz (rcx 1000: us, 1000000: ns). */
cycles_to:
	mul	%rcx
	mov	GUEST_PARAM_ADDR + P_TSC_KHZ, %rcx
	test	%rcx, %rcx
	jnz	1f
	mov	$1, %ecx
1:	div	%rcx
	ret

user_main:
	mov	%rdi, %r15
	shl	$GUEST_PERCPU_SHIFT, %r15
	add	$GUEST_PERCPU_ADDR, %r15
	mov	%rdi, PC_CPU(%r15)
	mov	%rdi, %r14
	shl	$GUEST_DATA_SHIFT, %r14
	add	$GUEST_DATA_ADDR, %r14
	call	region_sum
	mov	%rax, %r12
	mov	%rax, PC_CHECKSUM(%r15)
	xor	%r13d, %r13d
	mov	%r13, PC_COUNTER(%r15)
	movq	$0, PC_TICKS(%r15)
	movq	$0, PC_GAP_MAX(%r15)
	movq	$0, PC_GAP_MAX_US(%r15)
	movq	$0, PC_ERROR(%r15)
	movq	$0, PC_GAP_IDX(%r15)
	mov	GUEST_PARAM_ADDR + P_TSC_KHZ, %rax
	mov	GUEST_PARAM_ADDR + P_PRINT_MS, %rcx
	mul	%rcx
	mov	%rax, PC_INTERVAL(%r15)
	TSC
	mov	%rax, %rbp
	mov	%rax, PC_LAST_TSC(%r15)
	mov	%rax, PC_BOOT_TSC(%r15)
	mov	%rax, %rbx
	add	PC_INTERVAL(%r15), %rbx
	movq	$PC_STATE_RUNNING, PC_STATE(%r15)

/*
 * One iteration: check the TSC did not go backwards and record the gap
 * since the previous iteration; check the counter and checksum in RAM
 * still equal the register copies; advance the counter; write one word
 * of the checksum region and update the checksum incrementally.
 */
user_loop:
	TSC
	cmp	%rbp, %rax
	jb	err_tsc
	mov	%rax, %rcx
	sub	%rbp, %rcx
	cmp	PC_GAP_MAX(%r15), %rcx
	jbe	1f
	mov	%rcx, PC_GAP_MAX(%r15)
1:	cmp	GUEST_PARAM_ADDR + P_GAP_REC, %rcx
	jb	2f
	mov	PC_GAP_IDX(%r15), %rdx
	and	$(GUEST_GAP_RING - 1), %edx
	shl	$4, %edx
	mov	%rbp, PC_GAPS(%r15,%rdx)
	mov	%rax, PC_GAPS + 8(%r15,%rdx)
	incq	PC_GAP_IDX(%r15)
2:	mov	%rax, %rbp
	mov	%rax, PC_LAST_TSC(%r15)
	cmp	PC_COUNTER(%r15), %r13
	jne	err_counter
	cmp	PC_CHECKSUM(%r15), %r12
	jne	err_checksum
	inc	%r13
	mov	%r13, PC_COUNTER(%r15)
	mov	%r13, %rax
	and	$(GUEST_DATA_WORDS - 1), %eax
	lea	(%r14,%rax,8), %rsi
	mov	(%rsi), %rdx
	mov	%r13, %rax
	movabs	$0x9e3779b97f4a7c15, %rcx
	imul	%rcx, %rax
	mov	%rax, (%rsi)
	sub	%rdx, %r12
	add	%rax, %r12
	mov	%r12, PC_CHECKSUM(%r15)
	cmpq	$0, PC_CPU(%r15)
	jne	user_tick_check
	mov	GUEST_MAILBOX_ADDR + MB_CMD_SEQ, %rax
	cmp	GUEST_MAILBOX_ADDR + MB_DONE_SEQ, %rax
	jne	do_mailbox
user_tick_check:
	cmp	%rbx, %rbp
	jae	do_print
	jmp	user_loop

/*
 * Tick line, every P_PRINT_MS: re-verify the whole checksum region, then
 * "cpuN tick T gap-max Xus ok".  T counts tick lines.  The time spent
 * printing (a few ms of emulated ring 0 and UART exits) is not counted
 * as a gap: the previous-iteration TSC is re-read afterwards.
 */
do_print:
	call	region_sum
	cmp	%r12, %rax
	jne	err_verify
	incq	PC_TICKS(%r15)
	mov	PC_GAP_MAX(%r15), %rax
	mov	$1000, %ecx
	call	cycles_to
	mov	%rax, PC_GAP_MAX_US(%r15)
	lea	PC_UBUF(%r15), %rdi
	lea	s_cpu(%rip), %rsi
	call	fmt_str
	mov	PC_CPU(%r15), %rax
	call	fmt_dec
	lea	s_tick(%rip), %rsi
	call	fmt_str
	mov	PC_TICKS(%r15), %rax
	call	fmt_dec
	lea	s_gap(%rip), %rsi
	call	fmt_str
	mov	PC_GAP_MAX_US(%r15), %rax
	call	fmt_dec
	lea	s_ok(%rip), %rsi
	call	fmt_str
	lea	PC_UBUF(%r15), %rsi
	sub	%rsi, %rdi
	mov	%rdi, %rsi
	lea	PC_UBUF(%r15), %rdi
	mov	$SYS_WRITE, %eax
	ud2
	TSC
	mov	%rax, %rbp
	mov	%rax, PC_LAST_TSC(%r15)
	mov	%rax, %rbx
	add	PC_INTERVAL(%r15), %rbx
	jmp	user_loop

/* Mailbox command on cpu0; its duration is not counted as a gap either. */
do_mailbox:
	push	%rax
	movq	$0, GUEST_MAILBOX_ADDR + MB_STATUS
	mov	GUEST_MAILBOX_ADDR + MB_CMD, %rax
	cmp	$MB_CMD_TOUCH_READ, %rax
	je	mb_touch
	cmp	$MB_CMD_TOUCH_WRITE, %rax
	je	mb_touch
	cmp	$MB_CMD_BENCH_PIO, %rax
	je	mb_pio
	cmp	$MB_CMD_BENCH_SYSCALL, %rax
	je	mb_syscall
	cmp	$MB_CMD_FAULT, %rax
	jne	1f
	hlt				/* privileged: #GP, the cpu halts */
1:
	movq	$1, GUEST_MAILBOX_ADDR + MB_STATUS
	jmp	mb_done
mb_touch:
	mov	%rax, %r9
	TSC
	mov	%rax, %r8
	mov	GUEST_PARAM_ADDR + P_MEM_SIZE, %rcx
	xor	%esi, %esi
	cmp	$MB_CMD_TOUCH_WRITE, %r9
	je	2f
1:	movzbl	(%rsi), %eax
	add	$4096, %rsi
	cmp	%rcx, %rsi
	jb	1b
	jmp	3f
2:	lock orb $0, (%rsi)
	add	$4096, %rsi
	cmp	%rcx, %rsi
	jb	2b
3:	shr	$12, %rsi
	mov	%rsi, GUEST_MAILBOX_ADDR + MB_RESULT_COUNT
	jmp	mb_time
mb_pio:
	TSC
	mov	%rax, %r8
	mov	GUEST_MAILBOX_ADDR + MB_ARG, %rdi
	mov	%rdi, GUEST_MAILBOX_ADDR + MB_RESULT_COUNT
	mov	$SYS_PIO_BENCH, %eax
	ud2
	jmp	mb_time
mb_syscall:
	TSC
	mov	%rax, %r8
	mov	GUEST_MAILBOX_ADDR + MB_ARG, %r9
	mov	%r9, GUEST_MAILBOX_ADDR + MB_RESULT_COUNT
1:	test	%r9, %r9
	jz	mb_time
	mov	$SYS_NOP, %eax
	ud2
	dec	%r9
	jmp	1b
/* r8 = start TSC: store the elapsed time in us and ns. */
mb_time:
	TSC
	sub	%r8, %rax
	mov	%rax, %r9
	mov	$1000, %ecx
	call	cycles_to
	mov	%rax, GUEST_MAILBOX_ADDR + MB_RESULT_US
	mov	%r9, %rax
	mov	$1000000, %ecx
	call	cycles_to
	mov	%rax, GUEST_MAILBOX_ADDR + MB_RESULT_NS
mb_done:
	pop	%rax
	mov	%rax, GUEST_MAILBOX_ADDR + MB_DONE_SEQ
	TSC
	mov	%rax, %rbp
	mov	%rax, PC_LAST_TSC(%r15)
	jmp	user_tick_check

/*
 * Broken invariant: r10 = PC_ERR_*, rsi = message, r8 = value in RAM
 * (or now), r9 = register copy (or before).  Print
 * "cpuN ERROR: <message> ram=A reg=B" and halt this cpu.
 */
err_tsc:
	mov	$PC_ERR_TSC, %r10d
	lea	s_err_tsc(%rip), %rsi
	mov	%rax, %r8
	mov	%rbp, %r9
	jmp	user_error
err_counter:
	mov	$PC_ERR_COUNTER, %r10d
	lea	s_err_counter(%rip), %rsi
	mov	PC_COUNTER(%r15), %r8
	mov	%r13, %r9
	jmp	user_error
err_checksum:
	mov	$PC_ERR_CHECKSUM, %r10d
	lea	s_err_checksum(%rip), %rsi
	mov	PC_CHECKSUM(%r15), %r8
	mov	%r12, %r9
	jmp	user_error
err_verify:
	mov	$PC_ERR_VERIFY, %r10d
	lea	s_err_verify(%rip), %rsi
	mov	%rax, %r8
	mov	%r12, %r9
user_error:
	mov	%r10, PC_ERROR(%r15)
	movq	$PC_STATE_ERROR, PC_STATE(%r15)
	push	%r9
	push	%r8
	push	%rsi
	lea	PC_UBUF(%r15), %rdi
	lea	s_cpu(%rip), %rsi
	call	fmt_str
	mov	PC_CPU(%r15), %rax
	call	fmt_dec
	lea	s_error(%rip), %rsi
	call	fmt_str
	pop	%rsi
	call	fmt_str
	lea	s_ram(%rip), %rsi
	call	fmt_str
	pop	%rax
	call	fmt_dec
	lea	s_reg(%rip), %rsi
	call	fmt_str
	pop	%rax
	call	fmt_dec
	movb	$'\n', (%rdi)
	inc	%rdi
	lea	PC_UBUF(%r15), %rsi
	sub	%rsi, %rdi
	mov	%rdi, %rsi
	lea	PC_UBUF(%r15), %rdi
	mov	$SYS_WRITE, %eax
	ud2
	mov	$SYS_HALT, %eax
	ud2
	jmp	.

/*
 * Warm-up routine, run by the VMM on a spare vCPU of a NEW VM while the
 * old VM still runs the guest: in ring 3, through the guest's own page
 * tables, read one byte of every 4 KiB page, so that KVM builds the
 * shadow page tables the real vCPUs will find after the restore.  It
 * writes nothing (the guest is live); it ends with ud2, which the VMM
 * turns into an exit by giving this vCPU an empty IDT.
 */
	.globl	demo_vmm_guest_warm
demo_vmm_guest_warm:
	mov	GUEST_PARAM_ADDR + P_MEM_SIZE, %rcx
	xor	%esi, %esi
1:	movzbl	(%rsi), %eax
	add	$4096, %rsi
	cmp	%rcx, %rsi
	jb	1b
	ud2
	jmp	demo_vmm_guest_warm

/* ---- strings --------------------------------------------------------- */
s_banner:
	.ascii	"demo-vmm guest: long mode, ring 0 up, "
	.ascii	"workload in ring 3\n"
s_banner_end:
s_hex:	.ascii	"0123456789abcdef"
s_cpu:	.asciz	"cpu"
s_tick:	.asciz	" tick "
s_gap:	.asciz	" gap-max "
s_ok:	.asciz	"us ok\n"
s_error: .asciz	" ERROR: "
s_ram:	.asciz	" ram="
s_reg:	.asciz	" reg="
s_err_tsc: .asciz "TSC went backwards (ram=now, reg=previous)"
s_err_counter: .asciz "counter in RAM differs from the register copy"
s_err_checksum: .asciz "checksum in RAM differs from the register copy"
s_err_verify: .asciz "checksum region re-verification failed (ram=sum)"
s_exc0:	.asciz	"\n!!! cpu"
s_exc1:	.asciz	" EXCEPTION vector "
s_exc2:	.asciz	" error 0x"
s_exc3:	.asciz	" rip 0x"
s_exc4:	.asciz	" cs 0x"
s_exc5:	.asciz	" cr2 0x"
s_exc6:	.asciz	" - cpu halted !!!\n"

	.balign 16
demo_vmm_guest_end:

	.section .note.GNU-stack, "", @progbits
