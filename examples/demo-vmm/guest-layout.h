/*
 * guest-layout.h - the built-in guest's physical memory map, shared by
 * the VMM (C) and the guest (guest.S, through the C preprocessor).
 *
 * All guest RAM is identity-mapped (2 MiB pages, user-accessible), so a
 * guest physical address is also the guest's virtual address, in ring 0
 * and in ring 3.  Every field below is a little-endian u64.  Only plain
 * integer literals here: the assembler reads this file too.
 *
 *   0x001000  parameter block    written by the VMM before boot
 *   0x002000  mailbox            VMM -> cpu0 commands and their results
 *   0x003000  GDT                null, kernel code/data, user data/code,
 *                                one 64-bit TSS descriptor per vCPU
 *   0x004000  IDT                32 exception gates, filled by the guest
 *   0x005000  TSS array          128 bytes per vCPU (rsp0 only)
 *   0x006000  kernel data        console spinlock
 *   0x010000  per-vCPU pages     4 KiB each, published counters
 *   0x020000  PML4, 0x021000 PDPT, 0x022000.. page directories
 *   0x100000  guest image        guest.S, copied in by the VMM
 *   0x200000  kernel stacks      16 KiB per vCPU, cpu index at top - 8
 *   0x300000  user stacks        64 KiB per vCPU
 *   0x400000  checksum regions   256 KiB per vCPU, written by ring 3
 *   ...       free RAM           touched by the mailbox "touch" command
 */
#ifndef DEMO_VMM_GUEST_LAYOUT_H
#define DEMO_VMM_GUEST_LAYOUT_H

#define GUEST_MAX_CPUS 16
#define GUEST_MIN_MEM  0x1000000    /* 16 MiB */
#define GUEST_MAX_MEM  0x1000000000 /* 64 GiB, 64 PD pages */

#define GUEST_PARAM_ADDR   0x1000
#define GUEST_MAILBOX_ADDR 0x2000
#define GUEST_GDT_ADDR	   0x3000
#define GUEST_IDT_ADDR	   0x4000
#define GUEST_TSS_ADDR	   0x5000
#define GUEST_TSS_STRIDE   128
#define GUEST_CONSOLE_LOCK 0x6000
#define GUEST_PERCPU_ADDR  0x10000
#define GUEST_PERCPU_SHIFT 12
#define GUEST_PML4_ADDR	   0x20000
#define GUEST_PDPT_ADDR	   0x21000
#define GUEST_PD_ADDR	   0x22000
#define GUEST_CODE_ADDR	   0x100000
#define GUEST_CODE_MAX	   0x100000
#define GUEST_KSTACK_ADDR  0x200000
#define GUEST_KSTACK_SHIFT 14 /* 16 KiB, aligned */
#define GUEST_USTACK_ADDR  0x300000
#define GUEST_USTACK_SHIFT 16 /* 64 KiB */
#define GUEST_DATA_ADDR	   0x400000
#define GUEST_DATA_SHIFT   18 /* 256 KiB per vCPU */
#define GUEST_DATA_WORDS   32768

/* Segment selectors (GDT above). */
#define GUEST_KERNEL_CS	  0x08
#define GUEST_KERNEL_DS	  0x10
#define GUEST_USER_DS	  0x1b
#define GUEST_USER_CS	  0x23
#define GUEST_TSS_SEL0	  0x28 /* + 16 * cpu */
#define GUEST_IDT_VECTORS 32

/* Parameter block (VMM writes before the first KVM_RUN). */
#define P_MAGIC		    0  /* GUEST_PARAM_MAGIC */
#define P_VERSION	    8  /* GUEST_PARAM_VERSION */
#define P_TSC_KHZ	    16 /* KVM_GET_TSC_KHZ */
#define P_MEM_SIZE	    24 /* bytes of RAM, from GPA 0 */
#define P_NCPUS		    32
#define P_PRINT_MS	    40 /* tick line period per vCPU */
#define P_GAP_REC	    48 /* record gaps >= this many cycles */
#define GUEST_PARAM_MAGIC   0x4d52415050564d44 /* "DVMPPARM" */
#define GUEST_PARAM_VERSION 1

/*
 * Mailbox: the VMM writes MB_CMD and MB_ARG, then increments MB_CMD_SEQ.
 * cpu0 notices MB_CMD_SEQ != MB_DONE_SEQ between two iterations, runs
 * the command in ring 3, writes the results and MB_STATUS, and finally
 * copies MB_CMD_SEQ into MB_DONE_SEQ.
 */
#define MB_CMD_SEQ	0
#define MB_CMD		8
#define MB_ARG		16
#define MB_DONE_SEQ	24
#define MB_RESULT_US	32
#define MB_RESULT_NS	40
#define MB_RESULT_COUNT 48
#define MB_STATUS	56 /* 0 ok, 1 unknown command */

#define MB_CMD_TOUCH_READ    1 /* read a byte of every 4 KiB page */
#define MB_CMD_TOUCH_WRITE   2 /* lock or $0 into every page */
#define MB_CMD_BENCH_PIO     3 /* ARG port reads of the UART SCR */
#define MB_CMD_BENCH_SYSCALL 4 /* ARG null syscalls (ring 3->0->3) */
#define MB_CMD_FAULT	     5 /* test: hlt in ring 3, a #GP */

/* Per-vCPU page, written by that vCPU, read by the VMM. */
#define PC_STATE      0	 /* PC_STATE_* */
#define PC_COUNTER    8	 /* iterations since boot */
#define PC_CHECKSUM   16 /* sum of the checksum region */
#define PC_TICKS      24 /* tick lines printed */
#define PC_GAP_MAX    32 /* largest gap, TSC cycles */
#define PC_GAP_MAX_US 40 /* same in us, set per tick */
#define PC_LAST_TSC   48 /* TSC at the last iteration */
#define PC_CPU	      56 /* vCPU index */
#define PC_ERROR      64 /* PC_ERR_* or exception vector */
#define PC_BOOT_TSC   72
#define PC_INTERVAL   80   /* tick period in TSC cycles */
#define PC_GAP_IDX    88   /* gaps recorded so far */
#define PC_UBUF	      256  /* ring 3 line buffer */
#define PC_KBUF	      1024 /* ring 0 line buffer */

/*
 * Ring of the last GUEST_GAP_RING gaps of at least P_GAP_REC cycles:
 * entry (PC_GAP_IDX % GUEST_GAP_RING) is (TSC before, TSC after), so a
 * VMM that knows PC_LAST_TSC at the stop finds the exact pause the
 * guest saw across a handoff.
 */
#define PC_GAPS	       2048
#define GUEST_GAP_RING 128 /* to the end of the page */

#define PC_STATE_RUNNING 1
#define PC_STATE_ERROR	 2 /* ring 3 invariant broken */
#define PC_STATE_FAULT	 3 /* unexpected exception */

#define PC_ERR_TSC	1
#define PC_ERR_COUNTER	2
#define PC_ERR_CHECKSUM 3
#define PC_ERR_VERIFY	4

/* Syscalls: ring 3 puts the number in rax and executes ud2. */
#define SYS_WRITE     0 /* rdi buf, rsi len */
#define SYS_HALT      1
#define SYS_PIO_BENCH 2 /* rdi count */
#define SYS_NOP	      3

#define GUEST_COM1 0x3f8

#endif
